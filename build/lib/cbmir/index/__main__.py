from cbmir.index.build import main

raise SystemExit(main())
