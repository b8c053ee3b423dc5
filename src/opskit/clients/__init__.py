"""Protocol clients: each takes its transport or connection factory as an argument."""
