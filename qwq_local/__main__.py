"""`python -m qwq_local` and the `qwq` command: Ctrl-C while the CLI is still being imported (seconds on a busy
machine) exits 130 with one line, as it does once the command runs, never with a traceback."""

import sys


def run() -> None:
    try:
        from qwq_local.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
