from srcore.cli import main

raise SystemExit(main())
