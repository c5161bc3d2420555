"""Local stand-ins for external systems (GitHub API, Slack, Statewave) on 127.0.0.1."""
