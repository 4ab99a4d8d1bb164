"""The example Django project: ``outbound_django`` with three upstream services."""
