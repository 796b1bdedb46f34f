"""``kmsbridge demo``: the feature list played end to end on the local stack (docs/architecture.md §6).

Each step produces real records to Kafka, waits (bounded) until the KMS simulator's state or the
results topic shows the expected outcome, and prints the household's KMS state as a table. The demo
exits 0 only if every expectation held.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from kmsbridge.settings import Settings
from localdev.demo_history import history_steps
from localdev.demo_kit import Demo, Household, active_service, held_products, paired_box
from localdev.demo_operator import operator_steps
from localdev.demo_reconcile import reconcile_steps
from localdev.demo_runs import runs_steps
from localdev.demo_selection import selection_steps
from schemas.records import (
    Device,
    EventType,
    SubscriptionState,
)

__all__ = ["run_demo"]


def realtime_steps(d: Demo) -> Household:
    """The real-time scenario: activation, a sports channel, a rejected TWIN3, a termed service,
    suspension and resumption, a box swap."""
    run = d.run
    hh = Household(subscription_id=f"S-{run}",
                   cards={"MAIN": f"41{run}01", "TWIN1": f"41{run}02", "TWIN3": f"41{run}03",
                          "SWAP": f"41{run}04"},
                   boxes={"MAIN": f"STB-{run}-1", "TWIN1": f"STB-{run}-2", "TWIN3": f"STB-{run}-3",
                          "SWAP": f"STB-{run}-4"})
    main, twin = hh.cards["MAIN"], hh.cards["TWIN1"]
    basic = {"P100", "P101"}

    d.step("A household activates with MAIN and TWIN1 (TWIN1 may carry the basic package only)")
    hh.services = {"BASIC": active_service("BASIC")}
    hh.devices = [Device(distributor="MAIN", secure_client_id=main, stb_serial=hh.boxes["MAIN"]),
                  Device(distributor="TWIN1", secure_client_id=twin, stb_serial=hh.boxes["TWIN1"])]
    d.event(hh, EventType.ACTIVATED)
    d.wait_for("both boxes paired with BASIC", lambda s: held_products(s, main) == basic
               and held_products(s, twin) == basic and paired_box(s, main) == hh.boxes["MAIN"]
               and paired_box(s, twin) == hh.boxes["TWIN1"])
    d.table(hh)

    d.step("The household adds the SPORTS channel (MAIN only: TWIN1 is not allowed to carry it)")
    hh.services["SPORTS"] = active_service("SPORTS")
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("SPORTS on MAIN, not on TWIN1", lambda s: held_products(s, main) == basic | {"P200"}
               and held_products(s, twin) == basic)
    d.table(hh)

    d.step("A third box arrives as TWIN3, but TWIN3 requires TWIN2, which the household lacks")
    third = Device(distributor="TWIN3", secure_client_id=hh.cards["TWIN3"], stb_serial=hh.boxes["TWIN3"])
    before = list(hh.devices)
    hh.devices = [*before, third]
    ev = d.event(hh, EventType.DEVICES_CHANGED)
    rejected = d.wait_result("a REJECTED result for the TWIN3 event", lambda r: r.event_id == ev.event_id)
    if rejected is not None:
        click.echo(f"  result: {rejected.state.value} {rejected.error_code}: {rejected.error_description}")
        if rejected.state.value != "REJECTED":
            d.failures.append("TWIN3 event not rejected")
    hh.devices = before
    third_card = hh.cards["TWIN3"]
    if d.wait_for("the TWIN3 card cleared, never paired or entitled",
                  lambda s: third_card in s["secure_clients"] and not held_products(s, third_card)
                  and paired_box(s, third_card) is None):
        click.echo(f"  TWIN3 card {third_card}: the grant is rejected; the card is only cleared (a TWIN3 may not"
                   " stand without a TWIN2)")
    d.table(hh)

    d.step("A termed MOVIES service is added until tomorrow, then its term ends")
    hh.services["MOVIES"] = active_service("MOVIES", until=d.now + timedelta(days=1))
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("MOVIES (P300) on MAIN with its end date", lambda s: "P300" in held_products(s, main))
    d.table(hh)
    hh.services["MOVIES"] = active_service("MOVIES", until=datetime.now(UTC) - timedelta(minutes=1))
    d.event(hh, EventType.SERVICES_CHANGED)
    d.wait_for("MOVIES gone once its term ended", lambda s: "P300" not in held_products(s, main))
    d.table(hh)

    d.step("The subscription is suspended (unpaid bill), then resumed")
    hh.state = SubscriptionState.SUSPENDED
    d.event(hh, EventType.SUSPENDED)
    d.wait_for("every box cleared", lambda s: not held_products(s, main) and not held_products(s, twin))
    d.table(hh)
    hh.state = SubscriptionState.ACTIVE
    d.event(hh, EventType.RESUMED)
    d.wait_for("entitlements restored", lambda s: held_products(s, main) == basic | {"P200"}
               and held_products(s, twin) == basic)
    d.table(hh)

    d.step("The TWIN1 box is swapped for a new one")
    old = hh.devices[1]
    new = Device(distributor="TWIN1", secure_client_id=hh.cards["SWAP"], stb_serial=hh.boxes["SWAP"])
    hh.devices = [hh.devices[0], new]
    d.event(hh, EventType.DEVICES_CHANGED, removed=[old])
    swap = hh.cards["SWAP"]
    d.wait_for("old card cleared and unpaired, new card paired with BASIC",
               lambda s: not held_products(s, twin) and paired_box(s, twin) is None
               and held_products(s, swap) == basic and paired_box(s, swap) == hh.boxes["SWAP"])
    hh.cards = {"MAIN": main, "TWIN1": swap, "OLD": twin}
    d.table(hh)
    return hh


def run_demo(settings: Settings, simulator_url: str, token: str) -> int:
    demo = Demo(settings, simulator_url, token)
    click.echo(f"kmsbridge demo (run {demo.run}) — operator Aluxsat, KMS simulator {simulator_url}")
    try:
        hh = realtime_steps(demo)
        operator_steps(demo, hh)
        reconcile_steps(demo, hh)
        second = selection_steps(demo)
        runs_steps(demo, hh)
        click.echo("")
        click.echo(click.style("Final KMS state of the households, per box", bold=True))
        demo.table(hh)
        demo.table(second)
        history_steps(demo, hh)
    finally:
        demo.results.close()
    click.echo("")
    if demo.failures:
        click.echo(click.style(f"demo FAILED: {len(demo.failures)} expectation(s) did not hold", fg="red"))
        for f in demo.failures:
            click.echo(f"  - {f}")
        return 1
    click.echo(click.style("demo passed: every expected state held", fg="green"))
    return 0
