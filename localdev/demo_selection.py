"""The demo's chapter on per-box channels and revocation (docs/architecture.md §1 item 12, §5).

A second Aluxsat household, a living-room box (MAIN) and a bedroom box (TWIN1, which the provider
lets carry BASIC only):

1. it chooses SPORTS for the living-room box only; the bedroom box keeps BASIC;
2. it asks for SPORTS in the bedroom too: the grant is rejected (``SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR``)
   and nothing changes;
3. it hands back its MAIN box while the bedroom box stays: that event is rejected (a TWIN1 requires a
   MAIN), yet the MAIN card is cleared and unpaired and the bedroom box loses its channels;
4. its MAIN box comes back (paired and entitled again), then it cancels: both boxes are cleared.

Each step waits (bounded) for the KMS simulator's state and prints the household's KMS table.
"""

from __future__ import annotations

import click

from localdev.demo_kit import Demo, Household, active_service, held_products, paired_box
from schemas.records import Device, EventType, ResultState, SubscriptionState

__all__ = ["selection_steps"]

BASIC = {"P100", "P101"}
SPORTS = {"P200"}


def selection_steps(d: Demo) -> Household:
    """Play the chapter on a new household; returns it for the final table."""
    run = d.run
    hh = Household(subscription_id=f"S-{run}-2", cards={"MAIN": f"42{run}01", "TWIN1": f"42{run}02"},
                   boxes={"MAIN": f"STB-{run}-L", "TWIN1": f"STB-{run}-B"})
    main, twin = hh.cards["MAIN"], hh.cards["TWIN1"]
    living = Device(distributor="MAIN", secure_client_id=main, stb_serial=hh.boxes["MAIN"])
    bedroom = Device(distributor="TWIN1", secure_client_id=twin, stb_serial=hh.boxes["TWIN1"])

    d.step("A second household chooses SPORTS for its living-room box (MAIN) only; the bedroom box (TWIN1)"
           " keeps BASIC")
    hh.services = {"BASIC": active_service("BASIC"), "SPORTS": active_service("SPORTS", distributors=["MAIN"])}
    hh.devices = [living, bedroom]
    d.event(hh, EventType.ACTIVATED)
    d.wait_for("SPORTS on the living-room box only", lambda s: held_products(s, main) == BASIC | SPORTS
               and held_products(s, twin) == BASIC)
    d.table(hh)

    d.step("It asks for SPORTS in the bedroom too, but TWIN1 may carry BASIC only")
    hh.services["SPORTS"] = active_service("SPORTS", distributors=["MAIN", "TWIN1"])
    ev = d.event(hh, EventType.SERVICES_CHANGED)
    _expect_rejection(d, ev.event_id, "SERVICE_NOT_ALLOWED_ON_DISTRIBUTOR")
    d.wait_for("nothing granted, nothing taken", lambda s: held_products(s, main) == BASIC | SPORTS
               and held_products(s, twin) == BASIC)
    hh.services["SPORTS"] = active_service("SPORTS", distributors=["MAIN"])
    d.table(hh)

    d.step("It hands back the living-room box; the bedroom box may not stay entitled without a MAIN")
    hh.devices = [bedroom]
    ev = d.event(hh, EventType.DEVICES_CHANGED, removed=[living])
    _expect_rejection(d, ev.event_id, "REQUIRED_DISTRIBUTOR_MISSING")
    d.wait_for("MAIN cleared and unpaired, TWIN1 without channels",
               lambda s: not held_products(s, main) and paired_box(s, main) is None and not held_products(s, twin))
    click.echo("  the grant is rejected, what the change takes away is not")
    d.table(hh)

    d.step("The living-room box comes back (paired again, both boxes entitled); then the household cancels")
    hh.devices = [living, bedroom]
    d.event(hh, EventType.DEVICES_CHANGED, added=[living])
    d.wait_for("both boxes entitled again", lambda s: held_products(s, main) == BASIC | SPORTS
               and held_products(s, twin) == BASIC and paired_box(s, main) == hh.boxes["MAIN"])
    d.table(hh)
    hh.state = SubscriptionState.CANCELLED
    d.event(hh, EventType.CANCELLED)
    d.wait_for("both boxes cleared", lambda s: not held_products(s, main) and not held_products(s, twin))
    d.table(hh)
    return hh


def _expect_rejection(d: Demo, event_id: str, code: str) -> None:
    result = d.wait_result(f"a REJECTED result {code}",
                           lambda r: r.event_id == event_id and r.state is ResultState.REJECTED)
    if result is None:
        return
    click.echo(f"  result: {result.state.value} {result.error_code}: {result.error_description}")
    if result.error_code != code:
        d.failures.append(f"expected {code}, got {result.error_code}")
