from scaler.deploy.command import main

raise SystemExit(main())
