"""What every layer says about a chat: messages and turn stats, the <think> tags of a reply, the thinking budget
and loop guard (pure Python)."""
