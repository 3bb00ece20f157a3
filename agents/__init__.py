"""Agent workflows shipped with reinflow (users' own live in their own folders)."""
