#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def default_settings_module(argv):
    """The settings module used when neither --settings nor DJANGO_SETTINGS_MODULE names one.

    `test` gets the test settings, as pytest does through pytest.ini; every other command the
    production ones. Django takes the subcommand from argv[1] too, so this is the same
    dispatch. --settings still wins: Django applies it before it reads any setting.
    """
    return "main_app.settings_test" if argv[1:2] == ["test"] else "main_app.settings"


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", default_settings_module(sys.argv))
    # Only gunicorn's workers serve /metrics. A command started where the variable is set
    # (the Docker image sets it for every process) would leave files of its own in the
    # workers' directory, one set per run of a cron job: it counts in its own memory instead.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
