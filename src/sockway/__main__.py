from sockway.cli import main

raise SystemExit(main())
