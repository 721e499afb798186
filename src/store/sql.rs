//! The statements, one text for both backends (SQLite reads `$N` as the Nth
//! bound value, as PostgreSQL does). The only text that differs, the locking
//! read of a claim, is in [`Dialect`].

/// The statements whose text differs per backend.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Reads a message's status for a claim, locking the row until the
    /// transaction ends. SQLite needs no row lock: the claim transaction
    /// already holds the database's write lock from its first INSERT.
    pub select_for_claim: &'static str,
}

pub(crate) const SQLITE: Dialect = Dialect {
    select_for_claim: "SELECT status, provider_id FROM messages WHERE event_id = $1",
};

pub(crate) const POSTGRES: Dialect = Dialect {
    select_for_claim: "SELECT status, provider_id FROM messages WHERE event_id = $1 FOR UPDATE",
};

/// A first claim: creates the message. No row affected means it exists.
/// `$1` event id, `$2` class, `$3` user id, `$4` channel, `$5` fallback
/// from, `$6` now.
pub(crate) const CLAIM_INSERT_MESSAGE: &str = "\
INSERT INTO messages (event_id, class, user_id, channel, status, attempts, fallback_from, created_at, updated_at) \
VALUES ($1, $2, $3, $4, 'sending', 1, $5, $6, $6) \
ON CONFLICT (event_id) DO NOTHING";

/// Closes every attempt of an event still open as `outcome_unknown`.
/// `$1` event id, `$2` now, `$3` error.
pub(crate) const CLOSE_OPEN_ATTEMPTS: &str = "\
UPDATE attempts SET finished_at = $2, outcome = 'outcome_unknown', error = $3 \
WHERE event_id = $1 AND finished_at IS NULL";

/// A later claim of a claimable message; returns the new attempt's `seq`.
/// `$1` event id, `$2` channel, `$3` fallback from, `$4` now, `$5` class,
/// `$6` user id.
pub(crate) const RECLAIM_MESSAGE: &str = "\
UPDATE messages SET status = 'sending', channel = $2, fallback_from = $3, attempts = attempts + 1, \
class = $5, user_id = $6, finished_at = NULL, updated_at = $4 \
WHERE event_id = $1 RETURNING attempts";

/// A record for an event never claimed (a decode dead letter). `$1` event
/// id, `$2` class, `$3` user id, `$4` channel, `$5` status, `$6` provider id,
/// `$7` cost, `$8` segments, `$9` reason, `$10` error, `$11` now, `$12`
/// finished at.
pub(crate) const INSERT_RECORDED: &str = "\
INSERT INTO messages (event_id, class, user_id, channel, status, attempts, provider_id, cost_usd, segments, \
reason, last_error, created_at, updated_at, finished_at) \
VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $11, $12) \
ON CONFLICT (event_id) DO NOTHING";

/// Makes a dead-lettered or unknown message claimable again (DLQ replay).
/// `$1` event id, `$2` now.
pub(crate) const RELEASE: &str = "\
UPDATE messages SET status = 'retrying', finished_at = NULL, updated_at = $2 \
WHERE event_id = $1 AND status IN ('dead_lettered', 'outcome_unknown')";

pub(crate) const SELECT_MESSAGE: &str = "\
SELECT event_id, class, user_id, channel, status, attempts, provider_id, cost_usd, segments, reason, \
last_error, fallback_from, created_at, updated_at, finished_at \
FROM messages WHERE event_id = $1";

pub(crate) const SELECT_ATTEMPTS: &str = "\
SELECT attempt, channel, started_at, finished_at, outcome, error, provider_id, cost_usd \
FROM attempts WHERE event_id = $1 ORDER BY seq";

/// `$1` user id, `$2` from (inclusive), `$3` to (exclusive).
pub(crate) const USER_COST: &str = "\
SELECT channel, COUNT(*) AS messages, SUM(cost_usd) AS cost_usd FROM messages \
WHERE user_id = $1 AND finished_at >= $2 AND finished_at < $3 AND status = 'sent' \
GROUP BY channel ORDER BY channel";

/// One retention batch of delivered messages; attempts follow by cascade.
/// `$1` cutoff, `$2` batch size.
pub(crate) const PURGE_SENT: &str = "\
DELETE FROM messages WHERE event_id IN (\
SELECT event_id FROM messages WHERE status = 'sent' AND finished_at < $1 LIMIT $2)";

/// One retention batch of failed messages. `$1` cutoff, `$2` batch size.
pub(crate) const PURGE_FAILED: &str = "\
DELETE FROM messages WHERE event_id IN (\
SELECT event_id FROM messages \
WHERE status IN ('dead_lettered', 'outcome_unknown', 'suppressed') AND finished_at < $1 LIMIT $2)";

pub(crate) const PING: &str = "SELECT 1";

// ---------------------------------------------------------------------------
// Multi-row statements for the hot path: one statement per chunk of a batch
// instead of one per event. `?k` in a row template is the row's kth value;
// [`expand`] numbers them `$N` across the rows.

/// First claims of events: event id, class, user id, channel, fallback
/// from, now. Returns the ids actually inserted (the new events).
pub(crate) const CLAIM_INSERT_MANY: Many = Many {
    head:
        "INSERT INTO messages (event_id, class, user_id, channel, status, attempts, fallback_from, \
created_at, updated_at) VALUES ",
    row: "(?1, ?2, ?3, ?4, 'sending', 1, ?5, ?6, ?6)",
    params: 6,
    tail: " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
};

/// Opens attempts: event id, seq, attempt, channel, now.
pub(crate) const INSERT_ATTEMPTS_MANY: Many = Many {
    head: "INSERT INTO attempts (event_id, seq, attempt, channel, started_at) VALUES ",
    row: "(?1, ?2, ?3, ?4, ?5)",
    params: 5,
    tail: "",
};

/// Closes the open attempt each record names (one record per event):
/// event id, channel, attempt, now, outcome, error, provider id, cost.
/// Only an event's latest attempt (`seq = messages.attempts`) can be open,
/// so both joins are primary-key lookups whatever the planner's statistics.
pub(crate) const CLOSE_ATTEMPTS_MANY: Many = Many {
    head: "UPDATE attempts SET finished_at = v.column4, outcome = v.column5, error = v.column6, \
provider_id = v.column7, cost_usd = v.column8 FROM (VALUES ",
    row: "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    params: 8,
    tail: ") AS v, messages AS m WHERE m.event_id = v.column1 AND attempts.event_id = v.column1 \
AND attempts.seq = m.attempts AND attempts.channel = v.column2 AND attempts.attempt = v.column3 \
AND attempts.finished_at IS NULL",
};

/// `sent` wins over every status but itself: event id, channel, provider
/// id, cost, segments, now. Returns the ids it moved.
pub(crate) const RECORD_SENT_MANY: Many = Many {
    head: "UPDATE messages SET status = 'sent', channel = v.column2, provider_id = v.column3, \
cost_usd = v.column4, segments = v.column5, finished_at = v.column6, updated_at = v.column6 FROM (VALUES ",
    row: "(?1, ?2, ?3, ?4, ?5, ?6)",
    params: 6,
    tail: ") AS v WHERE messages.event_id = v.column1 AND messages.status <> 'sent' \
RETURNING messages.event_id",
};

/// Every other outcome moves only an unfinished message, and only from the
/// channel it is on: event id, channel, status, reason, error, finished at,
/// now. Returns the ids it moved.
pub(crate) const RECORD_OTHER_MANY: Many = Many {
    head: "UPDATE messages SET status = v.column3, reason = COALESCE(v.column4, messages.reason), \
last_error = COALESCE(v.column5, messages.last_error), finished_at = v.column6, updated_at = v.column7 \
FROM (VALUES ",
    row: "(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    params: 7,
    tail: ") AS v WHERE messages.event_id = v.column1 AND messages.channel = v.column2 \
AND messages.status IN ('sending', 'retrying', 'fallback', 'outcome_unknown') RETURNING messages.event_id",
};

/// The largest chunk of one multi-row statement on SQLite. Measured with
/// `herald bench` (50,000 events): 128 rows gave ~5,900 msg/s, 32 ~6,700,
/// 16 ~7,200, 8 ~6,600. sqlx looks up every parameter's name on SQLite, a
/// cost that grows with the square of the parameters per statement, while
/// smaller chunks mean more statements.
pub(crate) const SQLITE_MAX_CHUNK: usize = 16;

/// The largest chunk on PostgreSQL, which has no such cost: fewer, larger
/// statements win (16 rows measured ~20% slower than 128).
pub(crate) const POSTGRES_MAX_CHUNK: usize = 128;

/// A statement over a variable number of rows.
#[derive(Debug)]
pub(crate) struct Many {
    /// Text before the rows.
    pub head: &'static str,
    /// One row's template, values `?1`..`?params`.
    pub row: &'static str,
    /// Values per row.
    pub params: usize,
    /// Text after the rows.
    pub tail: &'static str,
}

impl Many {
    /// The statement for `rows` rows.
    pub(crate) fn text(&self, rows: usize) -> String {
        let mut text =
            String::with_capacity(self.head.len() + self.tail.len() + rows * (self.row.len() + 16));
        text.push_str(self.head);
        for r in 0..rows {
            if r > 0 {
                text.push_str(", ");
            }
            expand(self.row, r * self.params, &mut text);
        }
        text.push_str(self.tail);
        text
    }
}

/// Appends `template` with every `?k` replaced by `$(offset + k)`.
fn expand(template: &str, offset: usize, out: &mut String) {
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        let mut k = 0;
        while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
            k = k * 10 + digit as usize;
            chars.next();
        }
        out.push('$');
        out.push_str(&(offset + k).to_string());
    }
}

/// Splits `n` rows into chunk sizes from a small fixed set (`max`, a power
/// of two, and the powers of two below it), so each backend connection
/// caches a handful of prepared statements rather than one per batch size.
pub(crate) fn chunk_sizes(mut n: usize, max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while n >= max {
        sizes.push(max);
        n -= max;
    }
    let mut size = max / 2;
    while size > 0 {
        if n >= size {
            sizes.push(size);
            n -= size;
        }
        size /= 2;
    }
    sizes
}

/// `items` cut into the chunks of [`chunk_sizes`], in order.
pub(crate) fn chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    chunk_sizes(items.len(), max).into_iter().map(move |size| {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        chunk
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_numbered_across_the_statement() {
        assert_eq!(
            INSERT_ATTEMPTS_MANY.text(2),
            "INSERT INTO attempts (event_id, seq, attempt, channel, started_at) VALUES \
($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)"
        );
        let claim = CLAIM_INSERT_MANY.text(2);
        assert!(
            claim.contains("($1, $2, $3, $4, 'sending', 1, $5, $6, $6), ($7, $8, $9, $10, 'sending', 1, $11, $12, $12)"),
            "{claim}"
        );
        assert!(CLOSE_ATTEMPTS_MANY.text(12).contains("$96)"));
    }

    #[test]
    fn chunks_cover_the_batch_with_few_sizes() {
        assert_eq!(chunk_sizes(0, 128), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1, 128), [1]);
        assert_eq!(chunk_sizes(500, 128), [128, 128, 128, 64, 32, 16, 4]);
        assert_eq!(chunk_sizes(53, 16), [16, 16, 16, 4, 1]);
        let items: Vec<usize> = (0..53).collect();
        let cut: Vec<&[usize]> = chunks(&items, 16).collect();
        assert_eq!(
            cut.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [16, 16, 16, 4, 1]
        );
        assert_eq!(cut.concat(), items);
        for max in [SQLITE_MAX_CHUNK, POSTGRES_MAX_CHUNK] {
            assert!(max.is_power_of_two());
            for n in 0..1_000 {
                let sizes = chunk_sizes(n, max);
                assert_eq!(sizes.iter().sum::<usize>(), n);
                assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= max));
            }
        }
    }
}
