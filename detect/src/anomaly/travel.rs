//! Impossible travel: two successful interactive activities of one principal from places too
//! far apart for the time between them (after accuracy radii), within 24 hours.

use trailguard_common::contract::{Alert, Geo, Severity};

use super::{Anomalies, Place, PrincipalState, Seen, Sensitivity, Who, IMPOSSIBLE_TRAVEL};
use crate::classify::is_interactive;

impl Anomalies {
    /// Impossible travel; remembers the places of recent interactive activity (at most 4).
    pub(super) fn travel(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        geo: Option<&Geo>,
        out: &mut Vec<Alert>,
    ) {
        let Seen {
            a,
            t,
            learned,
            corporate,
            ..
        } = *seen;
        let who = Who(a);
        if let (Some((geo, (lat, lon))), Some(ip)) = (
            geo.filter(|_| is_interactive(a) && !corporate)
                .and_then(|g| g.latitude.zip(g.longitude).map(|p| (g, p))),
            a.source_ip,
        ) {
            let d = &self.cfg.impossible_travel;
            let (speed_max, min_km) = travel_params(self.sens(d), &self.cfg.tuning);
            let acc = geo
                .accuracy_radius_km
                .unwrap_or(self.cfg.tuning.unknown_accuracy_km)
                .min(1000) as f64;
            // Text only when an alert or a new place needs it.
            let label = || match (&geo.city, &geo.country) {
                (Some(city), Some(cc)) => format!("{city}, {cc}"),
                (None, Some(cc)) => cc.clone(),
                _ => format!("{lat:.1},{lon:.1}"),
            };
            st.places.retain(|p| (p.t - t).abs() <= 86_400);
            if learned && self.on(d, a) {
                let worst = st
                    .places
                    .iter()
                    .filter(|p| p.ip != ip)
                    .filter_map(|p| {
                        let km = haversine_km(p.lat as f64, p.lon as f64, lat, lon);
                        let effective = km - acc - p.acc as f64;
                        let hours = ((p.t - t).abs() as f64 / 3600.0).max(1.0 / 60.0);
                        let speed = effective / hours;
                        (km >= min_km && speed > speed_max).then_some((speed, km, p))
                    })
                    .max_by(|x, y| x.0.total_cmp(&y.0));
                if let Some((speed, km, p)) = worst {
                    let (first, second) = if p.t <= t {
                        (
                            (p.label.clone(), p.ip.to_string(), p.id.clone()),
                            (label(), ip.to_string(), a.id.clone()),
                        )
                    } else {
                        (
                            (label(), ip.to_string(), a.id.clone()),
                            (p.label.clone(), p.ip.to_string(), p.id.clone()),
                        )
                    };
                    let minutes = (p.t - t).abs() / 60;
                    if self.may_fire(st, format!("travel|{}|{}", first.1, second.1), t) {
                        let summary = format!(
                            "{who}: successful activity from {} ({}) and {} min later from {} ({}): {:.0} km, {:.0} km/h",
                            first.0, first.1, minutes, second.0, second.1, km, speed
                        );
                        out.push(self.alert(
                            a,
                            &IMPOSSIBLE_TRAVEL,
                            d,
                            Severity::High,
                            summary,
                            vec![first.2, second.2],
                            (
                                "Initial Access",
                                "T1078.004",
                                "Valid Accounts: Cloud Accounts",
                            ),
                        ));
                    }
                }
            }
            if !st
                .places
                .iter()
                .any(|p| p.ip == ip && (p.t - t).abs() < 3600)
            {
                while st.places.len() >= self.cfg.tuning.places_remembered.max(1) {
                    st.places.remove(0);
                }
                super::room_for_one(&mut st.places);
                st.places.push(Place {
                    t,
                    lat: lat as f32,
                    lon: lon as f32,
                    acc: acc as u16,
                    ip,
                    label: label(),
                    id: a.id.clone(),
                });
                st.places.sort_by_key(|p| p.t);
            }
        }
    }
}

/// Fastest plausible travel, km/h, and the least distance that counts, km.
fn travel_params(s: Sensitivity, t: &super::AnomalyTuning) -> (f64, f64) {
    let (speed, distance) = match s {
        Sensitivity::Low => (1.2, 1.6),
        Sensitivity::Medium => (1.0, 1.0),
        Sensitivity::High => (0.8, 0.6),
    };
    (t.travel_speed_kmh * speed, t.travel_min_km * distance)
}

/// Great-circle distance, km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travel_limits_follow_the_tuning() {
        let t = super::super::AnomalyTuning::default();
        assert_eq!(travel_params(Sensitivity::Low, &t), (1200.0, 800.0));
        assert_eq!(travel_params(Sensitivity::Medium, &t), (1000.0, 500.0));
        let high = travel_params(Sensitivity::High, &t);
        assert!(
            (high.0 - 800.0).abs() < 1e-9 && (high.1 - 300.0).abs() < 1e-9,
            "{high:?}"
        );
    }
}
