from qwq_local.cli import main

main()
