from lwpar.cli import main

raise SystemExit(main())
