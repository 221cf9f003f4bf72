"""The bot's own tables, declared once. Each entry of MIGRATIONS is one forward schema version.

Never edit a released entry: append a new one. Instants are ISO 8601 UTC text.
"""

MIGRATIONS: list[list[str]] = [
    # 1: audit, freezes, deploys with their approvals and steps, the Slack outbox,
    #    flags, and the migrations applied per service and environment.
    [
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            command TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '',
            before TEXT,
            after TEXT,
            note TEXT
        )""",
        "CREATE INDEX audit_target ON audit(target, id)",
        """CREATE TABLE freezes (
            id INTEGER PRIMARY KEY,
            start TEXT NOT NULL,
            "end" TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            lifted_by TEXT,
            lifted_at TEXT
        )""",
        """CREATE TABLE deploys (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL DEFAULT 'deploy',
            service TEXT NOT NULL,
            env TEXT NOT NULL,
            version TEXT NOT NULL,
            previous_version TEXT,
            requester TEXT NOT NULL,
            status TEXT NOT NULL,
            now_reason TEXT,
            canary TEXT,
            contract INTEGER NOT NULL DEFAULT 0,
            approvals_needed INTEGER NOT NULL DEFAULT 0,
            lint TEXT,
            channel TEXT,
            card_ts TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            queued_until TEXT,
            started_at TEXT,
            finished_at TEXT,
            outcome TEXT,
            blue_slot TEXT,
            green_slot TEXT,
            blue_version TEXT,
            blue_retire_at TEXT,
            blue_retired INTEGER NOT NULL DEFAULT 0,
            rollback_of INTEGER,
            traffic_at TEXT
        )""",
        "CREATE INDEX deploys_service ON deploys(service, env, id)",
        "CREATE INDEX deploys_status ON deploys(status)",
        """CREATE TABLE approvals (
            deploy_id INTEGER NOT NULL REFERENCES deploys(id),
            user TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (deploy_id, user)
        )""",
        """CREATE TABLE steps (
            id INTEGER PRIMARY KEY,
            deploy_id INTEGER NOT NULL REFERENCES deploys(id),
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX steps_deploy ON steps(deploy_id, id)",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            deploy_id INTEGER,
            method TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            result_ts TEXT
        )""",
        "CREATE INDEX outbox_pending ON outbox(sent_at, id)",
        """CREATE TABLE flags (
            key TEXT PRIMARY KEY,
            description TEXT NOT NULL DEFAULT '',
            owner TEXT NOT NULL DEFAULT '',
            default_value INTEGER NOT NULL DEFAULT 0,
            rollout INTEGER,
            rollout_by TEXT NOT NULL DEFAULT 'user',
            group_id TEXT,
            killed INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE flag_overrides (
            flag_key TEXT NOT NULL REFERENCES flags(key),
            tenant TEXT NOT NULL DEFAULT '',
            role TEXT NOT NULL DEFAULT '',
            value INTEGER NOT NULL,
            rollout INTEGER,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (flag_key, tenant, role)
        )""",
        """CREATE TABLE flag_changes (
            id INTEGER PRIMARY KEY,
            flag_key TEXT NOT NULL,
            change TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            note TEXT,
            status TEXT NOT NULL,
            run_at TEXT,
            created_at TEXT NOT NULL,
            applied_at TEXT
        )""",
        """CREATE TABLE applied_migrations (
            service TEXT NOT NULL,
            env TEXT NOT NULL,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            deploy_id INTEGER,
            PRIMARY KEY (service, env, name)
        )""",
    ],
    # 2: one heartbeat row, rewritten by every /healthz: proof that the store can still write.
    [
        """CREATE TABLE health (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            beat_at TEXT NOT NULL,
            pid INTEGER NOT NULL
        )""",
    ],
    # 3: the deploy queue and the card's buttons. `click_token` is a random token every button of
    # the deploy's card carries (a click with another token is refused, whatever message it came
    # from); `approved_at` orders the queue (approved first, started first); `stopped_by` is the
    # approver who pressed Stop on a running deploy.
    [
        "ALTER TABLE deploys ADD COLUMN click_token TEXT",
        "ALTER TABLE deploys ADD COLUMN approved_at TEXT",
        "ALTER TABLE deploys ADD COLUMN stopped_by TEXT",
    ],
    # 4: what the Slack edge has seen (storage/replays.py). `seen_signatures` holds the signature
    # of every signed request until its timestamp is more than 5 minutes old (after that Slack's
    # signature is stale anyway), with a digest of the body to recognise a retry of it;
    # `seen_events` holds Events API event IDs for an hour, so Slack's retries act once.
    [
        """CREATE TABLE seen_signatures (
            signature TEXT PRIMARY KEY,
            body_sha256 TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX seen_signatures_body ON seen_signatures(body_sha256)",
        "CREATE INDEX seen_signatures_expiry ON seen_signatures(expires_at)",
        """CREATE TABLE seen_events (
            event_id TEXT PRIMARY KEY,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX seen_events_expiry ON seen_events(expires_at)",
    ],
    # 5: the outbox's lanes and states. A row is ordered within its lane (one per deploy), waits
    #    for `next_at` when a transient failure delays it, and is `sending` from just before
    #    chat.postMessage until it is known to be in Slack: (channel, thread_ts) say where.
    [
        "ALTER TABLE outbox ADD COLUMN state TEXT NOT NULL DEFAULT 'queued'",
        "ALTER TABLE outbox ADD COLUMN lane TEXT NOT NULL DEFAULT 'general'",
        "ALTER TABLE outbox ADD COLUMN next_at TEXT",
        "ALTER TABLE outbox ADD COLUMN channel TEXT",
        "ALTER TABLE outbox ADD COLUMN thread_ts TEXT",
        """UPDATE outbox SET
            state = CASE WHEN sent_at IS NULL THEN 'queued' WHEN error IS NULL THEN 'sent' ELSE 'dropped' END,
            lane = CASE WHEN deploy_id IS NULL THEN 'general' ELSE 'deploy:' || deploy_id END""",
        "CREATE INDEX outbox_lanes ON outbox(lane, id) WHERE sent_at IS NULL",
    ],
    # 6: where a deploy's change came from, for CI requests and lead-time numbers: the git `sha`,
    #    `committed_at` (ISO 8601 UTC) and `requested_by` (free text a CI job names, e.g. the GitHub
    #    actor, beside `requester`, the Slack user or API token that asked).
    [
        "ALTER TABLE deploys ADD COLUMN sha TEXT",
        "ALTER TABLE deploys ADD COLUMN committed_at TEXT",
        "ALTER TABLE deploys ADD COLUMN requested_by TEXT",
    ],
    # 7: the REST API's idempotency keys and the webhook lanes of the outbox. A key is
    #    per token; it remembers a digest of the body it came with and the deploy it answered.
    #    Webhook deliveries are outbox rows (method 'webhook', lane 'webhook:...'); each event of a
    #    deploy is queued once per receiver, whoever notices it first.
    [
        """CREATE TABLE api_idempotency (
            token TEXT NOT NULL,
            key TEXT NOT NULL,
            body_sha256 TEXT NOT NULL,
            deploy_id INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (token, key)
        )""",
        "CREATE UNIQUE INDEX outbox_webhook_once ON outbox(lane, json_extract(payload, '$.event'), deploy_id)"
        " WHERE method = 'webhook' AND deploy_id IS NOT NULL",
        "CREATE INDEX outbox_webhook_deploy ON outbox(deploy_id) WHERE method = 'webhook'",
        # The live deploy of a service (storage.deploys.live), read by every API answer: without
        # it, SQLite sorts all of the service's deploys (3 ms at 200 deploys; 0.4 ms with it).
        "CREATE INDEX deploys_live ON deploys(service, env, status, traffic_at)",
    ],
    # 8: one-time sign-in links and browser sessions of the web dashboard. Only SHA-256
    #    digests of the secrets are stored, so a copy of the database signs nobody in. A link is
    #    spent by one conditional update (`used_at IS NULL`); a session carries its CSRF token.
    [
        """CREATE TABLE dashboard_links (
            token_sha256 TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT
        )""",
        """CREATE TABLE dashboard_sessions (
            id_sha256 TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at)",
        # the DORA numbers read deploys by environment and switch time; the live version of each
        # service is its latest succeeded switch
        "CREATE INDEX deploys_traffic ON deploys(env, traffic_at)",
        # what changed since the last look (App Home's refresh), and the rows GET /metrics has yet
        # to count (the ones not finished)
        "CREATE INDEX deploys_updated ON deploys(updated_at)",
        "CREATE INDEX deploys_open ON deploys(id) WHERE finished_at IS NULL",
        "CREATE INDEX steps_open ON steps(id) WHERE finished_at IS NULL",
        "CREATE INDEX deploys_rollbacks ON deploys(rollback_of) WHERE kind = 'rollback'",
    ],
    # 9: releases (commands/releases.py): a release deploy is one parent row (kind 'release', service =
    #    the release's name) whose `release_id` is its own id and whose `members` is the requested
    #    plan (JSON: service, version, previous_version, lint per member); each member is an
    #    ordinary deploy row of its service with `release_id` = the parent's id.
    [
        "ALTER TABLE deploys ADD COLUMN release_id INTEGER",
        "ALTER TABLE deploys ADD COLUMN members TEXT",
        "CREATE INDEX deploys_release ON deploys(release_id, id)",
    ],
]
