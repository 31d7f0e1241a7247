"""`python -m pldns` is the `pldns` command."""

from pldns.cli import main

raise SystemExit(main())
