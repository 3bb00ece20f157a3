"""Test-only engines: a real (slow, one request at a time) engine and a scripted one."""
