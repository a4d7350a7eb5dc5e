-- PostgreSQL arbitrates holds as well as orders (docs/contracts.md, "PostgreSQL").
--
-- One claim row per (event, seat), owned by the hold that took it last. A hold takes a claim only
-- when it is free, lapsed (expires_at <= now()) or already its own; a confirmed seat's claim never
-- lapses (expires_at = 'infinity'), so a lapsed hold can never beat a live one, whatever Redis
-- lost. Redis locks stay the fast path that refuses early; these rows decide.

CREATE TABLE seat_claims (
    event_id   text NOT NULL,
    seat_id    text NOT NULL,
    hold_id    uuid NOT NULL,
    user_id    text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (event_id, seat_id)
);
-- The per-user purchase limit counts a user's live claims (held and bought seats).
CREATE INDEX seat_claims_user ON seat_claims (event_id, user_id);

-- Holds and orders that exist when this migration runs keep their seats.
INSERT INTO seat_claims (event_id, seat_id, hold_id, user_id, expires_at)
SELECT o.event_id, l.seat_id, o.hold_id, o.user_id, 'infinity'
FROM order_lines l JOIN orders o USING (order_id)
WHERE l.live
ON CONFLICT DO NOTHING;
INSERT INTO seat_claims (event_id, seat_id, hold_id, user_id, expires_at)
SELECT h.event_id, s, h.hold_id, h.user_id, h.expires_at
FROM holds h, unnest(h.seat_ids) AS s
WHERE h.status = 'held' AND h.expires_at > now()
ON CONFLICT DO NOTHING;

-- A hold, decided in one statement. Returns no row when the hold is claimed and mirrored in
-- `holds`; otherwise rows (r_kind, r_seat, r_owner, r_owner_expires, r_count) saying why not:
--   ('sold',  seat, NULL, NULL, NULL)          the seat has a live order line;
--   ('held',  seat, owner, owner_expires, NULL) another live hold claims the seat;
--   ('limit', NULL, NULL, NULL, seats)         the user's held + bought seats would exceed p_cap.
CREATE FUNCTION tiketi_claim_hold(
    p_hold uuid, p_event text, p_user text, p_seats text[], p_expires timestamptz, p_cap integer)
RETURNS TABLE (r_kind text, r_seat text, r_owner uuid, r_owner_expires timestamptz, r_count integer)
LANGUAGE plpgsql AS $$
DECLARE
    mine integer;
    claimed integer;
BEGIN
    -- One claimant per (event, user) at a time: two holds of one user cannot both pass the cap.
    PERFORM pg_advisory_xact_lock(hashtextextended('tiketi-user:' || p_event || ':' || p_user, 0));
    RETURN QUERY
        SELECT 'sold'::text, l.seat_id, NULL::uuid, NULL::timestamptz, NULL::integer
        FROM order_lines l
        WHERE l.event_id = p_event AND l.live AND l.seat_id = ANY (p_seats)
        ORDER BY l.seat_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) INTO mine FROM seat_claims c
    WHERE c.event_id = p_event AND c.user_id = p_user AND c.expires_at > now() AND c.hold_id <> p_hold;
    IF mine + cardinality(p_seats) > p_cap THEN
        RETURN QUERY SELECT 'limit'::text, NULL::text, NULL::uuid, NULL::timestamptz, mine;
        RETURN;
    END IF;
    BEGIN
        -- Sorted, so two holds over the same seats lock them in one order (no deadlock).
        INSERT INTO seat_claims AS c (event_id, seat_id, hold_id, user_id, expires_at)
        SELECT p_event, s, p_hold, p_user, p_expires FROM unnest(p_seats) AS s ORDER BY s
        ON CONFLICT (event_id, seat_id) DO UPDATE
            SET hold_id = EXCLUDED.hold_id, user_id = EXCLUDED.user_id, expires_at = EXCLUDED.expires_at
            WHERE c.expires_at <= now() OR c.hold_id = EXCLUDED.hold_id;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        IF claimed < cardinality(p_seats) THEN
            RAISE EXCEPTION 'seat claimed by a live hold' USING ERRCODE = 'TK001';
        END IF;
        INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at)
        VALUES (p_hold, p_event, p_user, p_seats, p_expires);
    EXCEPTION WHEN SQLSTATE 'TK001' THEN
        -- The claims this statement took are rolled back with the block.
        RETURN QUERY
            SELECT 'held'::text, c.seat_id, c.hold_id, c.expires_at, NULL::integer
            FROM seat_claims c
            WHERE c.event_id = p_event AND c.seat_id = ANY (p_seats) AND c.hold_id <> p_hold
              AND c.expires_at > now()
            ORDER BY c.seat_id;
        IF NOT FOUND THEN
            -- Beaten by a hold that lapsed or was released within this statement: say so anyway.
            RETURN QUERY SELECT 'held'::text, s, NULL::uuid, NULL::timestamptz, NULL::integer
                FROM unnest(p_seats) AS s ORDER BY s;
        END IF;
        RETURN;
    END;
END
$$;

-- A confirm, decided in one statement (one round trip): the hold row is locked first, so two
-- confirms of one hold under different Idempotency-Keys are serialised and the second sees
-- 'confirmed'. Returns one row (r_outcome, r_seats, r_order, r_count):
--   'created'            the order and its lines are written, the idempotency record holds body;
--   'missing' | 'released' | 'confirmed' (with the existing order id);
--   'sale-ended'         now() is at or past p_sale_ends;
--   'admission-ended'    the hold lapsed and so did the admission it was made under (created_at
--                        + p_admission_ttl seconds: the admission began before the hold);
--   'limit'              a lapsed hold would take the user past p_cap (seats = their count);
--   'held'               seats claimed since by another live hold (seats = those seats);
--   'key-in-use'         another request committed this Idempotency-Key first.
-- A seat sold meanwhile surfaces as the unique violation of order_lines_one_live_booking_per_seat.
CREATE FUNCTION tiketi_confirm(
    p_hold uuid, p_user text, p_key text, p_fingerprint text, p_body jsonb, p_order uuid,
    p_created timestamptz, p_cap integer, p_sale_ends timestamptz, p_admission_ttl integer)
RETURNS TABLE (r_outcome text, r_seats text[], r_order uuid, r_count integer)
LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    mine integer;
    claimed integer;
BEGIN
    SELECT * INTO h FROM holds WHERE hold_id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF h.status = 'confirmed' THEN
        RETURN QUERY SELECT 'confirmed'::text, NULL::text[], o.order_id, NULL::integer
            FROM (SELECT 1) one LEFT JOIN orders o ON o.hold_id = p_hold;
        RETURN;
    END IF;
    IF h.status <> 'held' THEN
        RETURN QUERY SELECT h.status, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF p_sale_ends IS NOT NULL AND now() >= p_sale_ends THEN
        RETURN QUERY SELECT 'sale-ended'::text, NULL::text[], NULL::uuid, NULL::integer;
        RETURN;
    END IF;
    IF h.expires_at <= now() THEN
        IF p_admission_ttl IS NOT NULL AND now() >= h.created_at + make_interval(secs => p_admission_ttl) THEN
            RETURN QUERY SELECT 'admission-ended'::text, NULL::text[], NULL::uuid, NULL::integer;
            RETURN;
        END IF;
        -- A lapsed hold's claims no longer count towards the user's limit; taking them back must.
        PERFORM pg_advisory_xact_lock(hashtextextended('tiketi-user:' || h.event_id || ':' || h.user_id, 0));
        SELECT count(*) INTO mine FROM seat_claims c
        WHERE c.event_id = h.event_id AND c.user_id = h.user_id AND c.expires_at > now()
          AND c.hold_id <> p_hold;
        IF mine + cardinality(h.seat_ids) > p_cap THEN
            RETURN QUERY SELECT 'limit'::text, NULL::text[], NULL::uuid, mine;
            RETURN;
        END IF;
    END IF;
    BEGIN
        INSERT INTO seat_claims AS c (event_id, seat_id, hold_id, user_id, expires_at)
        SELECT h.event_id, s, p_hold, h.user_id, 'infinity' FROM unnest(h.seat_ids) AS s ORDER BY s
        ON CONFLICT (event_id, seat_id) DO UPDATE
            SET hold_id = EXCLUDED.hold_id, user_id = EXCLUDED.user_id, expires_at = 'infinity'
            WHERE c.hold_id = EXCLUDED.hold_id OR c.expires_at <= now();
        GET DIAGNOSTICS claimed = ROW_COUNT;
        IF claimed < cardinality(h.seat_ids) THEN
            RAISE EXCEPTION 'seat claimed by a live hold' USING ERRCODE = 'TK001';
        END IF;
        INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint, status_code, response)
        VALUES (p_user, p_key, p_fingerprint, 201, p_body) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key in use' USING ERRCODE = 'TK002';
        END IF;
        UPDATE holds SET status = 'confirmed' WHERE hold_id = p_hold;
        INSERT INTO orders (order_id, event_id, user_id, hold_id, created_at)
        VALUES (p_order, h.event_id, p_user, p_hold, p_created);
        INSERT INTO order_lines (order_id, event_id, seat_id)
        SELECT p_order, h.event_id, s FROM unnest(h.seat_ids) AS s;
    EXCEPTION
        WHEN SQLSTATE 'TK001' THEN
            RETURN QUERY SELECT 'held'::text,
                (SELECT array_agg(c.seat_id ORDER BY c.seat_id) FROM seat_claims c
                 WHERE c.event_id = h.event_id AND c.seat_id = ANY (h.seat_ids)
                   AND c.hold_id <> p_hold AND c.expires_at > now()),
                NULL::uuid, NULL::integer;
            RETURN;
        WHEN SQLSTATE 'TK002' THEN
            RETURN QUERY SELECT 'key-in-use'::text, NULL::text[], NULL::uuid, NULL::integer;
            RETURN;
    END;
    RETURN QUERY SELECT 'created'::text, NULL::text[], p_order, NULL::integer;
END
$$;
