//! Which network an address belongs to — its autonomous system (AS) number and organization —
//! and what that says: a hosting or cloud provider (category `hosting`), or a network the
//! organization counts as risky (`risky-network`).
//!
//! An attacker with stolen credentials rarely signs in from a home broadband line: he works
//! from a rented server or a cloud instance. No list of hosting addresses stays current, but
//! the networks they belong to change slowly, so hosting is judged by AS number against
//! [`HOSTING_ASNS`], a table of the large cloud and hosting providers (extended, or trimmed,
//! in `[intel]`).
//!
//! AS data is read from `geo.asn_databases`: MMDB files in the GeoLite2-ASN layout
//! (`autonomous_system_number`, `autonomous_system_organization`, as MaxMind and DB-IP ship
//! them) or CSV files of `first address,last address,AS number,organization` (the layout of
//! ip-location-db's `asn` package: RouteViews and DB-IP's IP-to-ASN Lite, CC BY 4.0). The CSV
//! reader is ours: the format is four columns with an optionally quoted last one, not worth a
//! dependency.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use trailguard_common::contract::Network;

/// Large cloud and hosting providers' AS numbers: addresses in them are `hosting`.
pub const HOSTING_ASNS: &[(u32, &str)] = &[
    (16509, "Amazon (AWS)"),
    (14618, "Amazon (AWS)"),
    (8987, "Amazon (AWS, Europe)"),
    (15169, "Google"),
    (396982, "Google Cloud"),
    (8075, "Microsoft (Azure)"),
    (31898, "Oracle Cloud"),
    (36351, "IBM Cloud (SoftLayer)"),
    (45102, "Alibaba Cloud"),
    (37963, "Alibaba Cloud (Hangzhou)"),
    (132203, "Tencent Cloud"),
    (45090, "Tencent Cloud (Shenzhen)"),
    (14061, "DigitalOcean"),
    (63949, "Akamai Connected Cloud (Linode)"),
    (20473, "Vultr (Choopa)"),
    (16276, "OVHcloud"),
    (24940, "Hetzner"),
    (213230, "Hetzner Cloud"),
    (12876, "Scaleway"),
    (51167, "Contabo"),
    (60781, "Leaseweb"),
    (16265, "Leaseweb"),
    (9009, "M247"),
    (60068, "Datacamp (CDN77)"),
    (47583, "Hostinger"),
    (8560, "IONOS"),
    (40676, "Psychz Networks"),
    (8100, "QuadraNet"),
    (36352, "ColoCrossing"),
    (53667, "FranTech (BuyVM)"),
    (54290, "Hostwinds"),
    (197540, "netcup"),
    (44477, "Stark Industries"),
    (49505, "Selectel"),
    (9123, "Timeweb"),
    (7979, "Servers.com"),
    (21859, "Zenlayer"),
    (26496, "GoDaddy"),
    (32244, "Liquid Web"),
    (19994, "Rackspace"),
    (54825, "Equinix Metal (Packet)"),
    (29802, "HIVELOCITY"),
];

/// How an AS is judged: the `[intel]` settings, resolved.
#[derive(Debug, Clone, Default)]
pub struct NetworkRisk {
    hosting: HashSet<u32>,
    risky: HashSet<u32>,
    /// Lower-case substrings of risky organizations' names.
    risky_organizations: Vec<String>,
}

impl NetworkRisk {
    /// The table (when `builtin`), plus `extra`, less `exempt`; and the risky networks.
    pub fn new(
        builtin: bool,
        extra: &[u32],
        exempt: &[u32],
        risky: &[u32],
        risky_organizations: &[String],
    ) -> Self {
        let hosting = HOSTING_ASNS
            .iter()
            .map(|(asn, _)| *asn)
            .filter(|_| builtin)
            .chain(extra.iter().copied())
            .filter(|asn| !exempt.contains(asn))
            .collect();
        NetworkRisk {
            hosting,
            risky: risky.iter().copied().collect(),
            risky_organizations: risky_organizations
                .iter()
                .map(|o| o.to_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// The categories `network` puts an address in (`hosting`, `risky-network`).
    pub fn categories(&self, network: &Network) -> impl Iterator<Item = &'static str> {
        let hosting = self.hosting.contains(&network.asn);
        let risky = self.risky.contains(&network.asn)
            || network.organization.as_deref().is_some_and(|org| {
                let org = org.to_lowercase();
                self.risky_organizations.iter().any(|r| org.contains(r))
            });
        [(hosting, "hosting"), (risky, "risky-network")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| c)
    }
}

/// An AS range of a CSV file.
#[derive(Debug, Clone, Copy)]
struct Range {
    first: u128,
    last: u128,
    asn: u32,
    /// Index into the organization names.
    org: u32,
    /// Which configured database it came from (its place in `geo.asn_databases`).
    source: u32,
}

/// The AS databases.
#[derive(Default)]
pub struct AsnDb {
    /// MMDB readers with their place in `geo.asn_databases`.
    readers: Vec<(u32, maxminddb::Reader<Vec<u8>>)>,
    /// Disjoint and sorted by first address once [`AsnDb::sorted`] has run: where the files'
    /// ranges overlap, each address keeps the range that wins it (see [`disjoint`]).
    ranges: Vec<Range>,
    organizations: Vec<Box<str>>,
    /// Databases added so far (the next one's place).
    sources: u32,
}

/// An MMDB record in the GeoLite2-ASN layout.
#[derive(Deserialize)]
struct AsnRecord {
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<String>,
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl AsnDb {
    /// Opens every configured file (`.mmdb`: MMDB, else CSV); `None` when none is
    /// configured. A file that cannot be read, or a CSV with no line understood, is an error
    /// naming its key.
    pub fn open(paths: &[PathBuf]) -> Result<Option<AsnDb>, trailguard_common::Error> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut db = AsnDb::default();
        for (i, path) in paths.iter().enumerate() {
            let key = format!("geo.asn_databases[{i}]");
            let cannot = |e: &dyn std::fmt::Display| {
                trailguard_common::Error::config(
                    &key,
                    format!("cannot read {}: {e}", path.display()),
                )
            };
            if path.extension().is_some_and(|e| e == "mmdb") {
                let reader = maxminddb::Reader::open_readfile(path).map_err(|e| cannot(&e))?;
                db.readers.push((db.sources, reader));
                db.sources += 1;
                continue;
            }
            let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
            let (read, bad) = db.add_csv(&text);
            if read == 0 {
                return Err(cannot(&"no line of `first,last,asn,organization` in it"));
            }
            if bad > 0 {
                tracing::warn!(file = %path.display(), bad, "AS database lines not understood (skipped)");
            }
            tracing::info!(file = %path.display(), ranges = read, "AS database loaded");
        }
        Ok(Some(db.sorted()))
    }

    /// Adds the ranges of a CSV text (`first,last,asn,organization`, the organization
    /// optionally in double quotes) as the next database; returns (ranges read, lines not
    /// understood). Call [`AsnDb::sorted`] after the last.
    pub fn add_csv(&mut self, text: &str) -> (usize, usize) {
        let source = self.sources;
        self.sources += 1;
        let (mut read, mut bad) = (0, 0);
        let mut last_org: Option<(String, u32)> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(4, ',');
            let parsed =
                (|| {
                    let first = fields.next()?.trim().parse::<IpAddr>().ok()?;
                    let last = fields.next()?.trim().parse::<IpAddr>().ok()?;
                    let asn = fields.next()?.trim().parse::<u32>().ok()?;
                    let org = unquote(fields.next().unwrap_or("").trim());
                    (first.is_ipv4() == last.is_ipv4() && as_u128(first) <= as_u128(last))
                        .then_some((as_u128(first), as_u128(last), asn, org))
                })();
            let Some((first, last, asn, org)) = parsed else {
                bad += 1;
                continue;
            };
            // Consecutive lines mostly share an organization: store it once per run.
            let org = match &last_org {
                Some((name, index)) if *name == org => *index,
                _ => {
                    let index = self.organizations.len() as u32;
                    self.organizations.push(org.clone().into_boxed_str());
                    last_org = Some((org, index));
                    index
                }
            };
            self.ranges.push(Range {
                first,
                last,
                asn,
                org,
                source,
            });
            read += 1;
        }
        (read, bad)
    }

    /// Readies the ranges read by [`AsnDb::add_csv`] for lookups: sorted, and made disjoint
    /// where they overlap.
    pub fn sorted(mut self) -> Self {
        self.ranges = disjoint(std::mem::take(&mut self.ranges));
        self
    }

    /// The network of `ip`, from the first database (in the configured order) that knows it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Network> {
        let n = as_u128(ip);
        let i = self.ranges.partition_point(|r| r.first <= n);
        let range = i
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .filter(|r| r.last >= n);
        // An MMDB configured before the CSV that knows the address is asked first.
        let before = range.map_or(u32::MAX, |r| r.source);
        for (_, reader) in self.readers.iter().filter(|(s, _)| *s < before) {
            if ip.is_ipv6() && reader.metadata.ip_version != 6 {
                continue;
            }
            if let Ok(Some(record)) = reader.lookup::<AsnRecord>(ip) {
                if let Some(asn) = record.autonomous_system_number {
                    return Some(Network {
                        asn,
                        organization: record
                            .autonomous_system_organization
                            .filter(|o| !o.is_empty()),
                    });
                }
            }
        }
        range.map(|range| Network {
            asn: range.asn,
            organization: self
                .organizations
                .get(range.org as usize)
                .filter(|o| !o.is_empty())
                .map(|o| o.to_string()),
        })
    }
}

/// The ranges sorted by first address and disjoint, each address kept by the range that wins
/// it: the first configured database's, and within one database the narrowest (the more
/// specific, as a route is). A lookup finds the range that starts nearest below an address, so
/// a wide range with a narrower one inside would otherwise lose every address after the
/// narrower one; a hostile line covering everything would hide nothing either.
///
/// Real AS data rarely overlaps: the ranges are checked first and returned as they are then.
/// Otherwise one sweep over the ranges' boundaries, the ranges covering the current stretch
/// in a heap by how they win: O(n log n) however they nest (a hostile file of wide ranges
/// over many narrow ones costs no more than any other).
fn disjoint(mut ranges: Vec<Range>) -> Vec<Range> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    ranges.sort_unstable_by_key(|r| (r.first, r.last));
    if ranges.windows(2).all(|w| w[0].last < w[1].first) {
        return ranges;
    }
    // Every point where the winner may change: a start, or the address after an end.
    let mut points: Vec<u128> = ranges
        .iter()
        .flat_map(|r| [Some(r.first), r.last.checked_add(1)])
        .flatten()
        .collect();
    points.sort_unstable();
    points.dedup();
    let wins = |r: &Range| (r.source, r.last - r.first);
    let mut covering: BinaryHeap<Reverse<((u32, u128), usize)>> = BinaryHeap::new();
    let mut next = 0;
    let mut out: Vec<Range> = Vec::new();
    for (i, &point) in points.iter().enumerate() {
        while let Some(r) = ranges.get(next).filter(|r| r.first == point) {
            covering.push(Reverse((wins(r), next)));
            next += 1;
        }
        // Ranges that ended before this point leave when they would win.
        while covering
            .peek()
            .is_some_and(|Reverse((_, j))| ranges[*j].last < point)
        {
            covering.pop();
        }
        let Some(Reverse((_, winner))) = covering.peek() else {
            continue;
        };
        let winner = ranges[*winner];
        let last = points
            .get(i + 1)
            .map_or(winner.last, |after| after - 1)
            .min(winner.last);
        match out.last_mut() {
            // The same range again right after its own piece: one piece.
            Some(piece)
                if piece.last.checked_add(1) == Some(point)
                    && (piece.asn, piece.org, piece.source)
                        == (winner.asn, winner.org, winner.source) =>
            {
                piece.last = last;
            }
            _ => out.push(Range {
                first: point,
                last,
                ..winner
            }),
        }
    }
    out
}

/// A CSV field without its surrounding double quotes (`""` inside is one quote).
fn unquote(field: &str) -> String {
    match field.strip_prefix('"').and_then(|f| f.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => field.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "1.0.0.0,1.0.0.255,13335,\"Cloudflare, Inc.\"\n\
        104.16.0.0,104.16.255.255,13335,\"Cloudflare, Inc.\"\n\
        159.203.0.0,159.203.255.255,14061,DigitalOcean LLC\n\
        71.253.0.0,71.253.255.255,701,\"Verizon Business\"\n\
        2a03:b0c0::,2a03:b0c0:ffff:ffff:ffff:ffff:ffff:ffff,14061,DigitalOcean LLC\n\
        not,a,line\n";

    fn db() -> AsnDb {
        let mut db = AsnDb::default();
        assert_eq!(db.add_csv(CSV), (5, 1));
        db.sorted()
    }

    #[test]
    fn csv_ranges_are_looked_up_by_address() {
        let db = db();
        let net = |ip: &str| db.lookup(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(
            net("159.203.10.20"),
            Some(Network {
                asn: 14061,
                organization: Some("DigitalOcean LLC".into())
            })
        );
        assert_eq!(
            net("1.0.0.1").and_then(|n| n.organization),
            Some("Cloudflare, Inc.".into())
        );
        assert_eq!(net("2a03:b0c0:2:d0::1").map(|n| n.asn), Some(14061));
        assert_eq!(net("1.0.1.1"), None, "between ranges");
        assert_eq!(net("10.0.0.1"), None);
    }

    /// Ranges may overlap — a wide range with narrower ones inside it, in one file or across
    /// files (or a hostile line covering everything): every address inside the wide range is
    /// still found, the narrower range wins within a file, and the first configured file wins.
    #[test]
    fn overlapping_ranges_are_all_found_and_the_first_file_wins() {
        let asn = |db: &AsnDb, ip: [u8; 4]| db.lookup(IpAddr::from(ip)).map(|n| n.asn);
        let mut db = AsnDb::default();
        db.add_csv(
            "10.0.0.0,10.255.255.255,1,Wide\n\
             10.1.0.0,10.1.255.255,2,Narrow\n\
             10.1.2.0,10.1.2.255,3,Narrower\n\
             10.200.0.0,10.200.0.255,4,Last\n",
        );
        db.add_csv(
            "0.0.0.0,255.255.255.255,666,Everything\n\
             10.1.0.0,10.1.0.255,5,Second file\n\
             11.0.0.0,11.0.0.255,6,Only here\n",
        );
        let db = db.sorted();
        assert_eq!(asn(&db, [10, 0, 0, 1]), Some(1));
        assert_eq!(
            asn(&db, [10, 2, 0, 1]),
            Some(1),
            "after a narrower range inside"
        );
        assert_eq!(
            asn(&db, [10, 1, 0, 1]),
            Some(2),
            "the narrower range in one file"
        );
        assert_eq!(asn(&db, [10, 1, 2, 9]), Some(3));
        assert_eq!(asn(&db, [10, 1, 3, 9]), Some(2), "after the narrowest");
        assert_eq!(asn(&db, [10, 200, 0, 9]), Some(4));
        assert_eq!(asn(&db, [10, 255, 255, 255]), Some(1));
        assert_eq!(asn(&db, [11, 0, 0, 1]), Some(6));
        assert_eq!(
            asn(&db, [9, 9, 9, 9]),
            Some(666),
            "only the second file knows it"
        );
        assert_eq!(asn(&db, [255, 255, 255, 255]), Some(666));
        assert_eq!(asn(&db, [0, 0, 0, 0]), Some(666));
    }

    /// A hostile file — many narrow ranges under as many ranges covering everything — is made
    /// disjoint in one sweep (the first version walked every narrow range for each wide one)
    /// and answers as a small one does.
    #[test]
    fn many_narrow_ranges_under_many_wide_ones() {
        let mut csv = String::new();
        for i in 0..20_000u32 {
            let [_, _, c, d] = i.to_be_bytes();
            csv.push_str(&format!("10.0.{c}.{d},10.0.{c}.{d},1,narrow\n"));
        }
        for _ in 0..20_000 {
            csv.push_str("0.0.0.0,255.255.255.255,2,everything\n");
        }
        let mut db = AsnDb::default();
        assert_eq!(db.add_csv(&csv), (40_000, 0));
        let db = db.sorted();
        let asn = |ip: [u8; 4]| db.lookup(IpAddr::from(ip)).map(|n| n.asn);
        assert_eq!(asn([10, 0, 0, 7]), Some(1));
        assert_eq!(asn([10, 0, 78, 31]), Some(1));
        assert_eq!(asn([10, 0, 78, 32]), Some(2));
        assert_eq!(asn([192, 0, 2, 1]), Some(2));
        assert!(db.ranges.len() <= 20_002, "{}", db.ranges.len());
    }

    #[test]
    fn hosting_and_risky_networks() {
        let db = db();
        let risk = NetworkRisk::new(true, &[], &[], &[701], &["cloudflare".into()]);
        let categories = |ip: &str| -> Vec<&str> {
            db.lookup(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
                .map(|n| risk.categories(&n).collect())
                .unwrap_or_default()
        };
        assert_eq!(categories("159.203.10.20"), ["hosting"]);
        assert_eq!(categories("71.253.1.1"), ["risky-network"], "by number");
        assert_eq!(
            categories("104.16.1.1"),
            ["risky-network"],
            "by organization"
        );
        // A provider the organization works from is taken off the table.
        let exempt = NetworkRisk::new(true, &[], &[14061], &[], &[]);
        let net = db.lookup(IpAddr::from([159, 203, 10, 20]));
        assert_eq!(net.map(|n| exempt.categories(&n).count()), Some(0));
        let none = NetworkRisk::new(false, &[701], &[], &[], &[]);
        let net = db.lookup(IpAddr::from([71, 253, 1, 1]));
        assert_eq!(
            net.map(|n| none.categories(&n).collect::<Vec<_>>()),
            Some(vec!["hosting"])
        );
    }

    /// The ip-location-db AS data the setup fetches, when it is there.
    #[test]
    fn shipped_asn_data_when_available() {
        let Ok(path) = std::env::var("TRAILGUARD_TEST_ASN_V4") else {
            return;
        };
        let db = AsnDb::open(&[PathBuf::from(path)]).ok().flatten();
        let db = db.expect("the AS database opens");
        assert_eq!(
            db.lookup(IpAddr::from([8, 8, 8, 8])).map(|n| n.asn),
            Some(15169)
        );
        let risk = NetworkRisk::new(true, &[], &[], &[], &[]);
        let do_net = db.lookup(IpAddr::from([159, 203, 10, 20]));
        assert!(
            do_net.is_some_and(|n| risk.categories(&n).any(|c| c == "hosting")),
            "DigitalOcean is hosting"
        );
    }
}
