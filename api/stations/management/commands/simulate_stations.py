"""
Play a fleet of simulated cabinets against a running server, with the real sender's
formats, signatures and retry rules.

    manage.py simulate_stations --url http://127.0.0.1:8000 --stations 20 --slots 8 \
        --interval 5 --duration 60 --seed 1 --email ... --password ... --secret ...

The fleet model is iot_tools/simulator.py; the sender is iot_tools/client.py. With
`--api-port` the command also plays the IoT system's own HTTP API for these cabinets (login,
popup_sn, check, check_all), so the server's rentals eject banks the fleet's next full sync
no longer reports; point the server's IOT_SYSTEM_API_URL at it (scripts/run does).
"""

import ipaddress
import logging
import time
import urllib.parse
from collections import Counter
from itertools import cycle

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from api.iot_system.client import IoTSystemClient
from api.rentals.models import RentalPackage
from api.rentals.services.rental_service import RentalService
from api.stations.management.commands.iot_send import configured_secret
from api.stations.models import PowerBank
from iot_tools.client import add_sender_arguments, sender_from_options
from iot_tools.simulator import (
    DEFAULT_PREFIX,
    MAX_SLOTS,
    MIN_SLOTS,
    ApiBehaviour,
    Fleet,
    FleetConfig,
    FleetRunner,
    IoTApiServer,
    Take,
)
from main_app.exceptions import ApiError

logger = logging.getLogger(__name__)


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RentalStarter:
    """
    Starts a rental for each bank a simulated customer takes, through the project's own
    `RentalService.start_rental`, so the later `returned` message closes it on the server.

    This writes to the database this command is configured with: it only makes sense
    when that is the server's database (same DATABASE_URL). Customers are the active
    non-staff users, taken in turn; the package is the first active one. The ejection goes
    to `cabinet` (default: the IoT system the settings name).
    """

    def __init__(self, package: RentalPackage, customers: list, cabinet=None):
        self.package = package
        self._customers = cycle(customers)
        self.cabinet = cabinet

    @classmethod
    def from_database(cls) -> "RentalStarter | str":
        """A starter, or the reason there cannot be one."""
        package = RentalPackage.objects.filter(is_active=True).first()
        customers = list(
            get_user_model().objects.filter(is_staff=False, is_active=True).order_by("pk")[:20]
        )
        if package is None:
            return "no active rental package"
        if not customers:
            return "no active non-staff user"
        return cls(package, customers)

    def __call__(self, take: Take) -> str:
        try:
            bank = PowerBank.objects.filter(serial_number=take.bank_serial).first()
            if bank is None:
                # The full sync that registers the bank failed, or the server uses another database.
                return "skipped: bank not in this database"
            try:
                rental = RentalService.start_rental(
                    user=next(self._customers), power_bank=bank, package=self.package, cabinet=self.cabinet
                )
            except ApiError as exc:
                logger.info("No rental for %s: %s", take.bank_serial, exc.message)
                return f"skipped: {exc.code}"
            return "started" if rental.status in ("ACTIVE", "OVERDUE") else f"ejection {rental.ejection_outcome or rental.status}"
        finally:
            # Runs on a pool thread: give its connection back rather than leave it open.
            connection.close()


class Command(BaseCommand):
    help = (
        "Simulate a fleet of cabinets sending full syncs, returns and status changes to a "
        "running server, signed and retried exactly as the Java IoT sender does. Prints a "
        "summary every few seconds and a table of the server's answers at the end (Ctrl-C "
        "stops cleanly)."
    )

    def add_arguments(self, parser):
        add_sender_arguments(parser)
        fleet = parser.add_argument_group("fleet")
        fleet.add_argument("--stations", type=int, default=5, help="number of cabinets (default 5)")
        fleet.add_argument(
            "--slots", type=int, default=8, help=f"slots per cabinet, {MIN_SLOTS}-{MAX_SLOTS} (default 8)"
        )
        fleet.add_argument(
            "--interval", type=float, default=10.0,
            help="seconds between a station's full syncs, jittered +/-20%% (default 10)",
        )
        fleet.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
        fleet.add_argument("--seed", type=int, default=None, help="random seed: same seed, same fleet and decisions")
        fleet.add_argument(
            "--prefix", default=DEFAULT_PREFIX,
            help=f"first digits of the station IMEIs (default {DEFAULT_PREFIX}); the rest is the station number and a Luhn digit",
        )
        behaviour = parser.add_argument_group("behaviour (probabilities are 0-1)")
        behaviour.add_argument(
            "--take-probability", type=float, default=0.3,
            help="per station and full-sync cycle: a customer takes a charged bank (default 0.3)",
        )
        behaviour.add_argument(
            "--return-after", type=float, default=None, metavar="SECONDS",
            help="a taken bank comes back 1-1.5 times this later (default 3 intervals)",
        )
        behaviour.add_argument("--flap-probability", type=float, default=0.05, help="per station and cycle: OFFLINE then ONLINE (default 0.05)")
        behaviour.add_argument("--error-probability", type=float, default=0.05, help="per station and cycle: a slot goes into ERROR (default 0.05)")
        behaviour.add_argument("--resend-probability", type=float, default=0.03, help="per message: the identical body is sent again (default 0.03)")
        behaviour.add_argument("--stale-probability", type=float, default=0.03, help="per full sync: held back and sent after a newer one (default 0.03)")
        behaviour.add_argument(
            "--with-rentals", action="store_true",
            help="start a rental (RentalService.start_rental) for every bank taken; needs this command to use the server's database",
        )
        api = parser.add_argument_group(
            "the IoT system's API (the other direction: ejections and inventories for these cabinets)"
        )
        api.add_argument(
            "--api-port", type=int, default=None,
            help="serve it on 127.0.0.1:PORT (0: any free port); logins are IOT_SYSTEM_API_USERNAME/PASSWORD",
        )
        api.add_argument("--api-delay", type=float, default=0.5, help="seconds a cabinet takes to eject (default 0.5)")
        api.add_argument("--api-refusal-rate", type=float, default=0.05, help="share of ejections refused (default 0.05)")
        api.add_argument(
            "--api-timeout-rate", type=float, default=0.05,
            help="share of ejections answered 408 after --api-wait (default 0.05)",
        )
        api.add_argument(
            "--api-late-eject-rate", type=float, default=0.5,
            help="of the timed-out ejections, the share whose bank comes out anyway (default 0.5)",
        )
        api.add_argument("--api-wait", type=float, default=15.0, help="seconds a timed-out ejection waits (default 15)")
        run = parser.add_argument_group("run")
        run.add_argument("--workers", type=int, default=None, help="sending threads (default min(stations, 16))")
        run.add_argument("--summary-every", type=float, default=5.0, help="seconds between live summary lines (default 5)")
        run.add_argument("--timeout", type=float, default=15.0, help="read timeout per request in seconds (default 15, as the sender)")
        run.add_argument(
            "--allow-remote", action="store_true",
            help="allow a URL that is not this machine (the simulator creates stations wherever it points)",
        )

    def handle(self, *args, **options):
        url = options["url"]
        if not is_loopback(url) and not options["allow_remote"]:
            raise CommandError(
                f"{url} is not this machine; the simulator registers fake stations there. "
                "Pass --allow-remote if that is really intended."
            )
        config = FleetConfig(
            stations=options["stations"],
            slots=options["slots"],
            interval=options["interval"],
            seed=options["seed"],
            prefix=options["prefix"],
            take_probability=options["take_probability"],
            return_after=options["return_after"],
            flap_probability=options["flap_probability"],
            error_probability=options["error_probability"],
            resend_probability=options["resend_probability"],
            stale_probability=options["stale_probability"],
        )
        try:
            config.validate()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["duration"] is not None and options["duration"] <= 0:
            raise CommandError("--duration must be positive")
        try:
            sender = sender_from_options(options, default_secret=configured_secret, timeout=options["timeout"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        api_server = None
        behaviour = None
        if options["api_port"] is not None:
            behaviour = ApiBehaviour(
                delay=options["api_delay"],
                refusal_rate=options["api_refusal_rate"],
                timeout_rate=options["api_timeout_rate"],
                late_eject_rate=options["api_late_eject_rate"],
                wait=options["api_wait"],
            )
            try:
                behaviour.validate()
            except ValueError as exc:
                raise CommandError(f"--api-{str(exc).replace('_', '-')}") from None
            if not (settings.IOT_SYSTEM_API_USERNAME and settings.IOT_SYSTEM_API_PASSWORD):
                raise CommandError(
                    "--api-port needs IOT_SYSTEM_API_USERNAME and IOT_SYSTEM_API_PASSWORD: the logins it accepts."
                )

        on_take = None
        cabinet = None
        if options["with_rentals"]:
            starter = RentalStarter.from_database()
            if isinstance(starter, str):
                self.stderr.write(self.style.WARNING(f"--with-rentals: {starter}; taking banks without rentals."))
            else:
                on_take = starter
                self.stdout.write(
                    f"Rentals: package {starter.package.name!r} for active non-staff users, in this "
                    f"database ({connection.settings_dict['NAME']})."
                )
        workers = options["workers"] or min(config.stations, 16)

        # With our own API the customers' takes go through it: a take is a rental start, and
        # the bank leaves only if the API ejects it.
        fleet = Fleet(
            config, start=time.time(), wait_for_takes=True, takes_by_request=on_take is not None and behaviour is not None
        )
        if behaviour is not None:
            try:
                api_server = IoTApiServer(
                    fleet,
                    username=settings.IOT_SYSTEM_API_USERNAME,
                    password=settings.IOT_SYSTEM_API_PASSWORD,
                    port=options["api_port"],
                    behaviour=behaviour,
                    seed=config.seed,
                ).start()
            except OSError as exc:
                raise CommandError(f"--api-port {options['api_port']}: {exc.strerror or exc}") from None
            self.stdout.write(
                f"IoT system API for these cabinets at {api_server.url} (ejections take ~{behaviour.delay:g} s; "
                f"{behaviour.refusal_rate:.0%} refused, {behaviour.timeout_rate:.0%} time out after {behaviour.wait:g} s)."
            )
            if on_take is not None:
                cabinet = IoTSystemClient(
                    api_server.url,
                    settings.IOT_SYSTEM_API_USERNAME,
                    settings.IOT_SYSTEM_API_PASSWORD,
                    connect_timeout=settings.IOT_SYSTEM_API_CONNECT_TIMEOUT,
                    timeout=settings.IOT_SYSTEM_API_TIMEOUT,
                    popup_timeout=max(settings.IOT_SYSTEM_API_POPUP_TIMEOUT, behaviour.wait + 5),
                    check_timeout=settings.IOT_SYSTEM_API_CHECK_TIMEOUT,
                )
                on_take.cabinet = cabinet
        self.stdout.write(
            f"Simulating {config.stations} station(s) x {config.slots} slots against {sender.base_url} "
            f"as {sender.email}: full sync every ~{config.interval:g} s, {workers} sending thread(s), "
            f"seed {config.seed if config.seed is not None else 'random'}"
            + (f", for {options['duration']:g} s" if options["duration"] else ", until Ctrl-C")
            + "."
        )
        self.stdout.write(
            "Stations: " + ", ".join(station.serial for station in fleet.stations[:5])
            + (f" ... ({len(fleet.stations)})" if len(fleet.stations) > 5 else "")
        )
        # Each rental start logs at INFO; the live summary says the same, one line per few seconds.
        rental_logger = logging.getLogger("api.rentals")
        quiet = on_take is not None and options["verbosity"] < 2 and not rental_logger.isEnabledFor(logging.DEBUG)
        previous_level = rental_logger.level
        if quiet:
            rental_logger.setLevel(logging.WARNING)
        runner = FleetRunner(
            fleet,
            sender,
            workers=workers,
            write=self.stdout.write,
            on_take=on_take,
            summary_every=options["summary_every"],
        )
        try:
            stats = runner.run(duration=options["duration"])
        finally:
            if quiet:
                rental_logger.setLevel(previous_level)
            if api_server is not None:
                api_server.stop()
            if cabinet is not None:
                cabinet.close()

        self.stdout.write("")
        self.stdout.write(
            f"{'Interrupted' if runner.interrupted else 'Finished'} after {runner.elapsed:.1f} s. "
            f"Fleet: {fleet.counts['takes']} bank(s) taken, {fleet.counts['returns']} returned, "
            f"{fleet.counts['flaps']} OFFLINE/ONLINE flap(s), {fleet.counts['slot errors']} slot error(s), "
            f"{fleet.counts['resends']} resend(s), {fleet.counts['held back']} full sync(s) held back."
        )
        if api_server is not None:
            outcomes = Counter(what for _, _, what in api_server.popups)
            self.stdout.write(
                f"IoT system API: {api_server.logins} login(s), {len(api_server.popups)} ejection request(s)"
                + (f" ({', '.join(f'{what} {n}' for what, n in sorted(outcomes.items()))})" if outcomes else "")
                + f", {len(api_server.checks)} inventory request(s)."
            )
        self.stdout.write(stats.table())
        if stats.not_ok:
            self.stdout.write(self.style.WARNING(f"{stats.not_ok} message(s) did not end with HTTP 200."))
        else:
            self.stdout.write(self.style.SUCCESS(f"All {stats.total_sent} message(s) answered HTTP 200."))
