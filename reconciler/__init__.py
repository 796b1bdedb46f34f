"""The reconciler (docs/architecture.md §2, floor 2): projector, desired-state store, drift detection, reset runs.

Modules: :mod:`.store` (desired state, on :data:`~reconciler.tables.DESIRED_METADATA`),
:mod:`.projector` (``crm.subscriptions`` → store), :mod:`.drift` (pure comparison),
:mod:`.job` (reset runs and previews), :mod:`.expectations` (repairs in flight), :mod:`.lock` (the
run lock), :mod:`.runner` (``reconcile.requests`` → runs → ``reconcile.reports``). See
``docs/reconciler.md``.
"""
