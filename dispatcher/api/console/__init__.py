"""The read-only web console at ``/ui``: jobs, a job's routing and log, clusters, the queue.

Server-rendered pages (Jinja2 templates in ``templates/``) with one static script for live
updates (``static/console.js``, Server-Sent Events); nothing to build. ``routes`` serves
them, ``views`` builds what they show.
"""

from dispatcher.api.console.routes import COOKIE, ConsoleRuntime, mount_console
from dispatcher.api.console.views import QueueEntry, QueueSource, RoutingQueue, Waiting

__all__ = [
    "COOKIE",
    "ConsoleRuntime",
    "QueueEntry",
    "QueueSource",
    "RoutingQueue",
    "Waiting",
    "mount_console",
]
