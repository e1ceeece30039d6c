from jaxconv.cli import main

raise SystemExit(main())
