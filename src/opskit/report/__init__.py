"""What people (and machines) read: plans as text, Markdown and JSON; run progress."""
