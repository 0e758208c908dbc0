//! Timestamps as the logs, audit records and join tokens print them: RFC 3339, in UTC.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current time, to the nanosecond (trailing zeros dropped), e.g.
/// `2026-11-27T15:36:48.4246706Z`.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC (whole seconds; infallible for years 0 to 9999).
pub fn rfc3339_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_utc_and_now_parses_back() {
        let t = OffsetDateTime::from_unix_timestamp(1_709_164_800)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(rfc3339_seconds(t), "2024-02-29T00:00:00Z");
        let now = OffsetDateTime::parse(&now_rfc3339(), &Rfc3339).unwrap();
        assert!((OffsetDateTime::now_utc() - now).whole_seconds().abs() < 60);
    }
}
