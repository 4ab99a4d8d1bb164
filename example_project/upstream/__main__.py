"""``python -m example_project.upstream --port 8001``: the simulator, switchable at runtime over HTTP.

curl -X POST 'http://127.0.0.1:8001/_control/mode?name=failing&status=503&retry_after=1'
curl -X POST 'http://127.0.0.1:8001/_control/mode?name=slow&delay=2'
curl -X POST 'http://127.0.0.1:8001/_control/mode?name=refuse'      # stop accepting connections
curl -X POST 'http://127.0.0.1:8001/_control/mode?name=flapping&period=2'
curl -X POST 'http://127.0.0.1:8001/_control/mode?name=healthy'
curl http://127.0.0.1:8001/_control/stats
"""

from __future__ import annotations

import sys
from pathlib import Path

# The simulator is the test suite's upstream: one implementation, not two.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.upstream import main

if __name__ == "__main__":
    main()
