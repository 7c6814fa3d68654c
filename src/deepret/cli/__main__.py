from deepret.cli import main

raise SystemExit(main())
