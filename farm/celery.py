"""The farm's Celery app for Celery's own tools: `celery -A farm inspect ping|active|registered`,
`celery -A farm events`, `celery -A farm flower`.

Celery's app discovery (`-A farm`) imports `farm`, finds no `app` there, and imports this module
for its `app`. The app is the one workers use (`farm.cluster.queue.get_app`): same broker (FARM_REDIS_URL
or the running embedded farm), same serialisation and queues, and the farm's tasks registered. With
no farm configured or running, the import ends with one line saying so, not a traceback.
"""

from __future__ import annotations

from farm.cluster.queue import get_app
from farm.errors import FarmError

try:
    app = get_app()
except FarmError as e:  # no broker configured: say what to do, once
    raise SystemExit(f"farm: {e}") from None

celery = app  # the name Celery's discovery tries second
