"""Where the local LLM server listens by default, and the line it announces its address with once it accepts
connections, which whoever started it reads (run.server_process, `cv-queue dev --llm local`). A module of its own,
light, so that the command line (command.py) and the server (run.py) share it without importing each other."""

LOOPBACK = "127.0.0.1"
READY_PREFIX = "llm-server listening on "
