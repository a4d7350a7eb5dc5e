-- tiketi reservation schema. Plain CREATE TABLE (no IF NOT EXISTS): applying this twice fails
-- loudly, which is how the "three replicas migrate exactly once" test would notice a missing lock.

CREATE TABLE events (
    event_id    text PRIMARY KEY,
    config      jsonb NOT NULL,
    total_seats integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE seats (
    event_id    text NOT NULL REFERENCES events (event_id),
    seat_id     text NOT NULL,
    section     text NOT NULL,
    row_number  integer,
    seat_number integer NOT NULL,
    price_tier  text,
    position    integer NOT NULL,
    PRIMARY KEY (event_id, seat_id)
);

-- A hold is mirrored here so it can still be confirmed when Redis lost its lock or its record.
CREATE TABLE holds (
    hold_id     uuid PRIMARY KEY,
    event_id    text NOT NULL REFERENCES events (event_id),
    user_id     text NOT NULL,
    seat_ids    text[] NOT NULL,
    status      text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'released', 'confirmed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    released_at timestamptz
);
CREATE INDEX holds_event_user ON holds (event_id, user_id);

CREATE TABLE orders (
    order_id   uuid PRIMARY KEY,
    event_id   text NOT NULL REFERENCES events (event_id),
    user_id    text NOT NULL,
    -- A hold turns into at most one order.
    hold_id    uuid NOT NULL UNIQUE REFERENCES holds (hold_id),
    status     text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user ON orders (user_id);

CREATE TABLE order_lines (
    order_id uuid NOT NULL REFERENCES orders (order_id),
    event_id text NOT NULL,
    seat_id  text NOT NULL,
    live     boolean NOT NULL DEFAULT true,
    PRIMARY KEY (order_id, seat_id),
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id)
);
-- The last line of defence against double booking: one live booking per seat, whatever Redis says.
CREATE UNIQUE INDEX order_lines_one_live_booking_per_seat ON order_lines (event_id, seat_id) WHERE live;

-- Idempotency-Key records: the first answer to (user, key) is replayed to every retry.
CREATE TABLE idempotency_keys (
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    fingerprint     text NOT NULL,
    status_code     smallint,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
