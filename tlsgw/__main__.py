from tlsgw.cli import main

raise SystemExit(main())
