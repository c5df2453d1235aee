from __future__ import annotations

from django.core.wsgi import get_wsgi_application

from reslock_web.startup import configure_or_exit

configure_or_exit()
application = get_wsgi_application()
