"""``python -m tests.fakes [--api-key K] [--port N] [--no-record]``: serve the fake Statewave."""

from .statewave import main

raise SystemExit(main())
