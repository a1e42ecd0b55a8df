import sys

from scaler.simulator.cli import simulate_main

raise SystemExit(simulate_main(sys.argv[1:]))
