# One image for every reslock service (web, worker, beat, migrate); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY reslock ./reslock
COPY reslock_web ./reslock_web
RUN pip install '.[board]'

COPY manage.py ./
COPY templates ./templates
COPY static ./static
# Static files are collected at build time; SECRET_KEY here only satisfies the settings check.
RUN SECRET_KEY=build-only STATIC_ROOT=/app/staticfiles python manage.py collectstatic --noinput

RUN useradd --system --uid 10001 reslock && mkdir -p /app/var && chown reslock /app/var
USER reslock
ENV STATIC_ROOT=/app/staticfiles RESLOCK_VAR_DIR=/app/var
EXPOSE 8000
CMD ["gunicorn", "reslock_web.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4"]
