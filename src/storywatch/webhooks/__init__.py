"""Outbound webhooks (SPEC §10): every matching event, POSTed to a URL, at least once.

The package is a follower of the event log. Its modules, from pure to I/O:

    config     the ``webhooks:`` list of the config file → :class:`HookConfig` (pure)
    signing    Standard Webhooks v1 headers: webhook-id, -timestamp, -signature (pure)
    bodies     the ``standard`` and ``slack`` request bodies (pure)
    retry      what an attempt's outcome means and when the next one is due (pure)
    matching   what a hook receives of an event: scope rewrite, then filter (pure)
    store      each hook's durable state (cursor, counters, dead letters): memory, sqlite
    source     what the sender needs from the log (a Protocol) and its adapters
    redis      the Redis store and source (imported only for ``backend.kind: redis``)
    sender     the only importer of httpx: one delivery task per hook, test deliveries
    service    lifecycle: pick the store, start/stop delivery, hand the API to the server
    api        ``GET /api/hooks``, ``GET /api/hooks/{name}/dead``, ``POST …/test``
    commands   ``storywatch hooks status`` / ``hooks test NAME``

Nothing is imported here, so ``storywatch.config`` can import :mod:`.config` cheaply.
"""
