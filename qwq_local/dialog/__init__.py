"""What every layer says about a chat: messages and turn stats, and the <think> tags of a reply (pure Python)."""
