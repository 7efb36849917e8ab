"""What people run: the CLI, the chat loop, the terminal display and the demo."""
