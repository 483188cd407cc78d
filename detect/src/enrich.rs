//! Enrichment: where a source IP is (an MMDB geolocation database) and what it is (IP
//! intelligence lists: Tor exits, anonymizing VPNs and proxies, hosting ranges, known-malicious
//! addresses, and the organization's own egress ranges).
//!
//! Both MaxMind's GeoLite2/GeoIP2 City and Country layout (`country.iso_code`,
//! `city.names.en`, `location.latitude`) and DB-IP Lite's flat city layout as ip-location-db
//! ships it (`country_code`, `city`, `latitude`, `longitude`) are read. Without a database the
//! geo-based detections are off (one warning at start-up) and everything else works.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trailguard_common::contract::{Enrichment, Geo};
use trailguard_common::Activity;

/// The `[geo]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeoConfig {
    /// MMDB files, tried in order (e.g. DB-IP's separate IPv4 and IPv6 files). Empty: no geo.
    pub databases: Vec<PathBuf>,
    /// AS databases, tried in order: MMDB (GeoLite2-ASN layout) or CSV
    /// (`first,last,asn,organization`). Empty: no network, so no `hosting` by network.
    pub asn_databases: Vec<PathBuf>,
}

/// The `[intel]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntelConfig {
    /// The lists; each has a category and a file or URL.
    pub lists: Vec<IntelList>,
    /// How often lists are read again (files and URLs). A list that could not be read is
    /// tried again sooner: after 1 minute, doubling up to this interval.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Also read the Tor Project's list of Tor exit addresses (category `tor`) from
    /// `tor_exit_list_url`. On by default, so sign-ins through Tor are known without setup.
    pub tor_exit_list: bool,
    /// Where the Tor exit list is read: one address per line.
    pub tor_exit_list_url: String,
    /// Put addresses of the large cloud and hosting providers' networks
    /// ([`crate::network::HOSTING_ASNS`]) in category `hosting` (needs `geo.asn_databases`).
    pub hosting_asns_builtin: bool,
    /// More AS numbers whose addresses are `hosting`.
    pub hosting_asns: Vec<u32>,
    /// AS numbers taken off the hosting table (a provider the organization works from).
    pub not_hosting_asns: Vec<u32>,
    /// AS numbers whose addresses are `risky-network`.
    pub risky_asns: Vec<u32>,
    /// AS organizations (case-insensitive parts of the name) whose addresses are
    /// `risky-network`.
    pub risky_organizations: Vec<String>,
}

/// The Tor Project's bulk exit list: every address a Tor exit relay has used lately.
pub const TOR_BULK_EXIT_LIST: &str = "https://check.torproject.org/torbulkexitlist";

impl Default for IntelConfig {
    fn default() -> Self {
        IntelConfig {
            lists: Vec::new(),
            refresh_interval: Duration::from_secs(3600),
            tor_exit_list: true,
            tor_exit_list_url: TOR_BULK_EXIT_LIST.into(),
            hosting_asns_builtin: true,
            hosting_asns: Vec::new(),
            not_hosting_asns: Vec::new(),
            risky_asns: Vec::new(),
            risky_organizations: Vec::new(),
        }
    }
}

/// Categories a list may carry; the detections read them.
pub const CATEGORIES: &[&str] = &[
    "tor",
    "vpn",
    "proxy",
    "hosting",
    "malicious",
    "risky-network",
    "corporate",
];

/// The categories of anonymising services: the caller hides where it is.
pub const ANONYMISING: &[&str] = &["tor", "vpn", "proxy"];

/// One list of addresses: one IP or CIDR per line (`#` starts a comment; a CSV line's first
/// column is used), all of one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntelList {
    /// `tor`, `vpn`, `proxy`, `hosting`, `malicious` or `corporate` (the organization's own
    /// egress and VPN ranges: never anomalous, never impossible travel).
    pub category: String,
    /// A local file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// An http(s) URL.
    #[serde(default)]
    pub url: Option<String>,
}

impl IntelConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        for (i, list) in self.lists.iter().enumerate() {
            if !CATEGORIES.contains(&list.category.as_str()) {
                return Err(trailguard_common::Error::config(
                    &format!("intel.lists[{i}].category"),
                    format!(
                        "`{}` is not one of {}",
                        list.category,
                        CATEGORIES.join(", ")
                    ),
                ));
            }
            match (&list.path, &list.url) {
                (Some(_), None) => {}
                (None, Some(url)) if url.starts_with("http://") || url.starts_with("https://") => {}
                (None, Some(_)) => {
                    return Err(trailguard_common::Error::config(
                        &format!("intel.lists[{i}].url"),
                        "must start with http:// or https://",
                    ))
                }
                _ => {
                    return Err(trailguard_common::Error::config(
                        &format!("intel.lists[{i}]"),
                        "give exactly one of `path` and `url`",
                    ))
                }
            }
        }
        let url = &self.tor_exit_list_url;
        if self.tor_exit_list && !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(trailguard_common::Error::config(
                "intel.tor_exit_list_url",
                "must start with http:// or https://",
            ));
        }
        if self.refresh_interval < Duration::from_secs(60) {
            return Err(trailguard_common::Error::config(
                "intel.refresh_interval",
                "must be at least 1m",
            ));
        }
        Ok(())
    }
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Sorted, merged address ranges of each category.
#[derive(Debug, Default, Clone)]
pub struct Intel {
    ranges: BTreeMap<String, Vec<(u128, u128)>>,
}

impl Intel {
    /// Adds the entries of one list's text; returns (entries read, lines not understood).
    pub fn add(&mut self, category: &str, text: &str) -> (usize, usize) {
        let (mut read, mut bad) = (0, 0);
        let list = self.ranges.entry(category.to_string()).or_default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let field = line
                .split([',', ';', ' ', '\t'])
                .next()
                .unwrap_or("")
                .trim();
            if field.is_empty() {
                continue;
            }
            let range = if let Ok(net) = field.parse::<ipnet::IpNet>() {
                Some((as_u128(net.network()), as_u128(net.broadcast())))
            } else if let Ok(ip) = field.parse::<IpAddr>() {
                Some((as_u128(ip), as_u128(ip)))
            } else {
                None
            };
            match range {
                Some(r) => {
                    list.push(r);
                    read += 1;
                }
                None => bad += 1,
            }
        }
        list.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(list.len());
        for &(start, end) in list.iter() {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        *list = merged;
        (read, bad)
    }

    /// The categories `ip` is listed under, sorted.
    pub fn categories(&self, ip: IpAddr) -> Vec<String> {
        let n = as_u128(ip);
        self.ranges
            .iter()
            .filter(|(_, ranges)| {
                let i = ranges.partition_point(|(start, _)| *start <= n);
                i > 0 && ranges[i - 1].1 >= n
            })
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Number of ranges held.
    pub fn len(&self) -> usize {
        self.ranges.values().map(Vec::len).sum()
    }

    /// True when no list has entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntelConfig {
    /// How networks are judged.
    pub fn network_risk(&self) -> crate::network::NetworkRisk {
        crate::network::NetworkRisk::new(
            self.hosting_asns_builtin,
            &self.hosting_asns,
            &self.not_hosting_asns,
            &self.risky_asns,
            &self.risky_organizations,
        )
    }

    /// The lists to read: the configured ones, then the Tor exit list when it is on.
    pub fn all_lists(&self) -> Vec<IntelList> {
        let mut lists = self.lists.clone();
        if self.tor_exit_list {
            lists.push(IntelList {
                category: "tor".into(),
                path: None,
                url: Some(self.tor_exit_list_url.clone()),
            });
        }
        lists
    }
}

/// The lists and the last text read from each: a list that cannot be read keeps what it
/// had (nothing, at start-up) and is tried again; the others are used meanwhile.
#[derive(Debug, Clone)]
pub struct IntelLists {
    lists: Vec<IntelList>,
    texts: Vec<Option<String>>,
}

impl IntelLists {
    /// The lists of `cfg`, none read yet.
    pub fn new(cfg: &IntelConfig) -> Self {
        let lists = cfg.all_lists();
        IntelLists {
            texts: vec![None; lists.len()],
            lists,
        }
    }

    /// Reads every list again; one that cannot be read is logged (naming it) and keeps its
    /// last text. Returns how many could not be read.
    pub async fn read(&mut self) -> usize {
        let mut failed = 0;
        for (i, list) in self.lists.iter().enumerate() {
            let (what, text) = match (&list.path, &list.url) {
                (Some(path), _) => (
                    path.display().to_string(),
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|e| e.to_string()),
                ),
                (None, Some(url)) => (url.clone(), fetch(url).await.map_err(|e| e.to_string())),
                (None, None) => continue,
            };
            // Text of which not one line is an address (an error page served as 200, a file
            // in another format) is not the list: the last one read stays.
            let text = text.and_then(|text| {
                let (read, bad) = Intel::default().add(&list.category, &text);
                if read == 0 && bad > 0 {
                    Err(format!(
                        "not one of its {bad} lines is an address or network"
                    ))
                } else {
                    Ok(text)
                }
            });
            match text {
                Ok(text) => self.texts[i] = Some(text),
                Err(error) => {
                    failed += 1;
                    let kept = self.texts[i].is_some();
                    tracing::warn!(list = %what, category = %list.category, %error, kept_last = kept, "intel list could not be read; trying again later");
                }
            }
        }
        failed
    }

    /// Whether every list has been read at least once.
    pub fn complete(&self) -> bool {
        self.texts.iter().all(Option::is_some)
    }

    /// The addresses of every list read.
    pub fn intel(&self) -> Intel {
        let mut intel = Intel::default();
        for (i, (list, text)) in self.lists.iter().zip(&self.texts).enumerate() {
            let Some(text) = text else { continue };
            let (read, bad) = intel.add(&list.category, text);
            if bad > 0 {
                tracing::warn!(list = i, category = %list.category, bad, "intel list lines not understood (skipped)");
            }
            tracing::debug!(list = i, category = %list.category, entries = read, "intel list loaded");
        }
        intel
    }
}

async fn fetch(url: &str) -> Result<String, reqwest::Error> {
    // Bounded: detect reads its lists at start-up, and a network that drops the connection
    // must not hold it up for long.
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

/// What an MMDB record may hold, in either layout.
#[derive(Deserialize, Default)]
struct Record {
    // GeoIP2 / GeoLite2.
    country: Option<Named>,
    registered_country: Option<Named>,
    city: Option<CityName>,
    location: Option<Location>,
    // DB-IP Lite (ip-location-db).
    country_code: Option<String>,
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// `city`: a name (DB-IP Lite) or a record holding it by language (GeoIP2), of which only the
/// English name is kept. Read by a visitor of either form: an untagged enum buffered the whole
/// record (every language's name, each a new string) before trying each form — on a cache
/// miss, most of what a lookup cost.
struct CityName(Option<String>);

impl<'de> Deserialize<'de> for CityName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct CityRecord {
            names: Option<Names>,
        }
        #[derive(Deserialize)]
        struct Names {
            en: Option<String>,
        }
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = CityName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a city name or a record of its names")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<CityName, E> {
                Ok(CityName(Some(name.to_owned())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CityName, A::Error> {
                let record =
                    CityRecord::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(CityName(record.names.and_then(|n| n.en)))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

#[derive(Deserialize)]
struct Named {
    iso_code: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u32>,
}

impl Record {
    fn into_geo(self) -> Option<Geo> {
        let country = self
            .country
            .and_then(|c| c.iso_code)
            .or(self.country_code)
            .or(self.registered_country.and_then(|c| c.iso_code));
        let city = self.city.and_then(|c| c.0).filter(|c| !c.is_empty());
        let (lat, lon, radius) = match self.location {
            Some(l) => (l.latitude, l.longitude, l.accuracy_radius),
            None => (self.latitude, self.longitude, None),
        };
        if country.is_none() && lat.is_none() {
            return None;
        }
        Some(Geo {
            country,
            city,
            latitude: lat.zip(lon).map(|(lat, _)| lat),
            longitude: lat.zip(lon).map(|(_, lon)| lon),
            accuracy_radius_km: radius,
        })
    }
}

/// The geolocation databases.
pub struct GeoDb {
    readers: Vec<maxminddb::Reader<Vec<u8>>>,
}

impl GeoDb {
    /// Opens every configured database; `None` when none is configured. A configured database
    /// that cannot be opened is an error naming it.
    pub fn open(cfg: &GeoConfig) -> Result<Option<GeoDb>, trailguard_common::Error> {
        if cfg.databases.is_empty() {
            return Ok(None);
        }
        let mut readers = Vec::new();
        for (i, path) in cfg.databases.iter().enumerate() {
            let reader = maxminddb::Reader::open_readfile(path).map_err(|e| {
                trailguard_common::Error::config(
                    &format!("geo.databases[{i}]"),
                    format!("cannot open {}: {e}", path.display()),
                )
            })?;
            readers.push(reader);
        }
        Ok(Some(GeoDb { readers }))
    }

    /// Where `ip` is, from the first database that knows.
    pub fn lookup(&self, ip: IpAddr) -> Option<Geo> {
        for reader in &self.readers {
            let v6_db = reader.metadata.ip_version == 6;
            if ip.is_ipv6() && !v6_db {
                continue;
            }
            if let Ok(Some(record)) = reader.lookup::<Record>(ip) {
                if let Some(geo) = record.into_geo() {
                    return Some(geo);
                }
            }
        }
        None
    }
}

/// Adds geo, network and IP categories to activities, caching per address.
pub struct Enricher {
    geo: Option<GeoDb>,
    asn: Option<crate::network::AsnDb>,
    risk: crate::network::NetworkRisk,
    intel: Arc<RwLock<Arc<Intel>>>,
    /// By address (foldhash, randomly seeded: looked up for every activity, SipHash was ≈ 2 %
    /// of detect's instructions; bounded by [`CACHE_MAX`]).
    cache: HashMap<IpAddr, Arc<Enrichment>, foldhash::fast::RandomState>,
    /// The intel generation the cache was filled from.
    cached_from: usize,
}

/// Most addresses remembered before the cache starts over.
const CACHE_MAX: usize = 200_000;

impl Enricher {
    /// An enricher over `geo` and the shared, refreshed `intel`.
    pub fn new(geo: Option<GeoDb>, intel: Arc<RwLock<Arc<Intel>>>) -> Self {
        Enricher {
            geo,
            asn: None,
            risk: crate::network::NetworkRisk::default(),
            intel,
            cache: HashMap::default(),
            cached_from: 0,
        }
    }

    /// Also looks up each address's network in `asn`, judged by `risk`.
    pub fn with_networks(
        mut self,
        asn: Option<crate::network::AsnDb>,
        risk: crate::network::NetworkRisk,
    ) -> Self {
        self.asn = asn;
        self.risk = risk;
        self
    }

    /// True when a geolocation database is loaded.
    pub fn has_geo(&self) -> bool {
        self.geo.is_some()
    }

    /// Fills `activity.enrichment` from its source IP.
    pub fn enrich(&mut self, activity: &mut Activity) {
        let Some(ip) = activity.source_ip else {
            return;
        };
        let intel = Arc::clone(&trailguard_common::sync::read(&self.intel));
        let generation = Arc::as_ptr(&intel) as usize;
        if generation != self.cached_from || self.cache.len() >= CACHE_MAX {
            self.cache.clear();
            self.cached_from = generation;
        }
        let (geo, asn, risk) = (&self.geo, &self.asn, &self.risk);
        let found = self.cache.entry(ip).or_insert_with(|| {
            let network = asn.as_ref().and_then(|db| db.lookup(ip));
            let mut ip_categories = intel.categories(ip);
            if let Some(network) = &network {
                for c in risk.categories(network) {
                    if !ip_categories.iter().any(|have| have == c) {
                        ip_categories.push(c.to_string());
                    }
                }
                ip_categories.sort_unstable();
            }
            Arc::new(Enrichment {
                geo: geo.as_ref().and_then(|g| g.lookup(ip)),
                ip_categories,
                network,
            })
        });
        activity.enrichment = Arc::clone(found);
    }
}

/// Reloads the lists every `refresh_interval` into `shared`, as one of the service's `tasks`;
/// a failed reload keeps the last good lists and logs why.
pub fn refresh_intel(
    mut lists: IntelLists,
    refresh_interval: Duration,
    shared: Arc<RwLock<Arc<Intel>>>,
    tasks: &trailguard_common::shutdown::Tasks,
) {
    if lists.lists.is_empty() {
        return;
    }
    let shutdown = tasks.shutdown().clone();
    tasks.spawn("intel refresher", async move {
        // A list missing is tried again after a minute, then two, ... up to the interval.
        let mut retry = Duration::from_secs(60);
        loop {
            let wait = if lists.complete() {
                refresh_interval
            } else {
                retry.min(refresh_interval)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let failed = lists.read().await;
            retry = if failed == 0 {
                Duration::from_secs(60)
            } else {
                (retry * 2).min(refresh_interval)
            };
            let intel = lists.intel();
            tracing::info!(entries = intel.len(), failed, "intel lists read again");
            *trailguard_common::sync::write(&shared) = Arc::new(intel);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_merge_and_match() {
        let mut intel = Intel::default();
        let text = "# tor exits\n185.220.101.1\n185.220.101.0/24 # whole range\nnot-an-ip\n2001:db8::/32\n10.0.0.5,extra,columns\n";
        assert_eq!(intel.add("tor", text), (4, 1));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(intel.categories(ip("185.220.101.77")), ["tor"]);
        assert!(intel.categories(ip("185.220.102.1")).is_empty());
        assert_eq!(intel.categories(ip("2001:db8:1::1")), ["tor"]);
        assert_eq!(intel.categories(ip("10.0.0.5")), ["tor"]);
        intel.add("corporate", "10.0.0.0/8");
        assert_eq!(intel.categories(ip("10.0.0.5")), ["corporate", "tor"]);
        assert_eq!(intel.len(), 4);
    }

    #[test]
    fn activities_from_one_address_share_its_enrichment_until_one_changes_it() {
        let mut intel = Intel::default();
        intel.add("tor", "185.220.101.0/24");
        let mut enricher = Enricher::new(None, Arc::new(RwLock::new(Arc::new(intel))));
        let mut activity = |ip: &str| {
            let record = serde_json::json!({
                "eventTime": "2026-01-02T03:04:05Z", "eventSource": "s3.amazonaws.com",
                "eventName": "ListBuckets", "sourceIPAddress": ip,
                "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/a"},
            });
            let mut a = match trailguard_ingest::normalize::normalize(&record.to_string()) {
                Ok(a) => a,
                Err(e) => panic!("{e}"),
            };
            enricher.enrich(&mut a);
            a
        };
        let (mut first, second) = (activity("185.220.101.7"), activity("185.220.101.7"));
        assert_eq!(second.enrichment.ip_categories, ["tor"]);
        assert!(Arc::ptr_eq(&first.enrichment, &second.enrichment));
        // Changing one activity's changes neither the other's nor the next one's.
        first.enrichment_mut().ip_categories.push("vpn".into());
        assert_eq!(first.enrichment.ip_categories, ["tor", "vpn"]);
        assert_eq!(second.enrichment.ip_categories, ["tor"]);
        assert_eq!(activity("185.220.101.7").enrichment.ip_categories, ["tor"]);
        assert!(activity("198.51.100.1").enrichment.is_empty());
    }

    #[test]
    fn bad_lists_are_named() {
        let cfg = IntelConfig {
            lists: vec![IntelList {
                category: "evil".into(),
                path: Some("x".into()),
                url: None,
            }],
            ..IntelConfig::default()
        };
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("intel.lists[0].category"), "{err}");
        let cfg = IntelConfig {
            lists: vec![IntelList {
                category: "tor".into(),
                path: None,
                url: None,
            }],
            ..IntelConfig::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[tokio::test]
    async fn a_list_that_cannot_be_read_is_tried_again_and_spares_the_others() {
        let dir = std::env::temp_dir().join(format!("intel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let (tor, corporate) = (dir.join("tor.txt"), dir.join("corporate.txt"));
        std::fs::write(&corporate, "10.0.0.0/8\n").ok();
        std::fs::remove_file(&tor).ok();
        let list = |category: &str, path: &std::path::Path| IntelList {
            category: category.into(),
            path: Some(path.to_path_buf()),
            url: None,
        };
        let cfg = IntelConfig {
            lists: vec![list("tor", &tor), list("corporate", &corporate)],
            // Nothing listens there: read, fail, and the others are still used.
            tor_exit_list_url: "http://127.0.0.1:9/torbulkexitlist".into(),
            ..IntelConfig::default()
        };
        assert!(cfg.validate().is_ok());
        let mut lists = IntelLists::new(&cfg);
        assert_eq!(
            lists.read().await,
            2,
            "the missing file and the unreachable URL"
        );
        assert!(!lists.complete());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(lists.intel().categories(ip("10.1.2.3")), ["corporate"]);
        std::fs::write(&tor, "185.220.101.0/24\n").ok();
        assert_eq!(lists.read().await, 1);
        assert_eq!(lists.intel().categories(ip("185.220.101.9")), ["tor"]);
        // A list that goes missing later keeps what it had.
        std::fs::remove_file(&tor).ok();
        assert_eq!(lists.read().await, 2);
        assert_eq!(lists.intel().categories(ip("185.220.101.9")), ["tor"]);
        // So does one that comes back as something else (an error page): not an empty list.
        std::fs::write(
            &tor,
            "<html><body>503 Service Unavailable</body></html>
",
        )
        .ok();
        assert_eq!(lists.read().await, 2);
        assert_eq!(lists.intel().categories(ip("185.220.101.9")), ["tor"]);
        // An empty list is a list (nothing listed today).
        std::fs::write(
            &tor,
            "# no exits today
",
        )
        .ok();
        assert_eq!(lists.read().await, 1);
        assert!(lists.intel().categories(ip("185.220.101.9")).is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_tor_exit_list_is_read_by_default() {
        let cfg = IntelConfig::default();
        let lists = cfg.all_lists();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].category, "tor");
        assert_eq!(lists[0].url.as_deref(), Some(TOR_BULK_EXIT_LIST));
        let off = IntelConfig {
            tor_exit_list: false,
            ..IntelConfig::default()
        };
        assert!(off.all_lists().is_empty());
    }

    /// Records of both layouts, decoded as a database's are (through serde), with the fields
    /// each layout has beside those read.
    #[test]
    fn records_of_both_layouts() -> Result<(), serde_json::Error> {
        let dbip: Record = serde_json::from_str(
            r#"{"city":"Berlin","country_code":"DE","latitude":52.52,"longitude":13.4,
                "state1":"Land Berlin","postcode":"10117","timezone":"Europe/Berlin"}"#,
        )?;
        let geo = dbip.into_geo();
        assert_eq!(geo.as_ref().and_then(|g| g.country.as_deref()), Some("DE"));
        assert_eq!(geo.as_ref().and_then(|g| g.city.as_deref()), Some("Berlin"));
        let maxmind: Record = serde_json::from_str(
            r#"{"city":{"geoname_id":2694762,"names":{"de":"Linköping","en":"Linköping","ja":"リンシェーピング"}},
                "continent":{"code":"EU","names":{"en":"Europe"}},
                "country":{"geoname_id":2661886,"iso_code":"SE","names":{"en":"Sweden"}},
                "location":{"accuracy_radius":76,"latitude":58.4,"longitude":15.6,"time_zone":"Europe/Stockholm"},
                "subdivisions":[{"iso_code":"E","names":{"en":"Östergötland County"}}]}"#,
        )?;
        let geo = maxmind.into_geo();
        assert_eq!(geo.as_ref().and_then(|g| g.country.as_deref()), Some("SE"));
        assert_eq!(
            geo.as_ref().and_then(|g| g.city.as_deref()),
            Some("Linköping")
        );
        assert_eq!(geo.as_ref().and_then(|g| g.accuracy_radius_km), Some(76));
        assert_eq!(geo.as_ref().and_then(|g| g.latitude), Some(58.4));
        // A city record without an English name, or with no names: no city.
        let unnamed: Record = serde_json::from_str(
            r#"{"city":{"names":{"de":"Köln"}},"country":{"iso_code":"DE"}}"#,
        )?;
        assert_eq!(unnamed.into_geo().and_then(|g| g.city), None);
        let bare: Record = serde_json::from_str(r#"{"city":{},"country":{"iso_code":"DE"}}"#)?;
        assert_eq!(bare.into_geo().map(|g| g.country), Some(Some("DE".into())));
        assert!(Record::default().into_geo().is_none());
        Ok(())
    }

    /// Against the real DB-IP database when the local setup fetched it.
    #[test]
    fn dbip_lookup_when_available() {
        let Ok(path) = std::env::var("TRAILGUARD_TEST_GEO_V4") else {
            return;
        };
        let db = GeoDb::open(&GeoConfig {
            databases: vec![path.into()],
            ..GeoConfig::default()
        });
        let Ok(Some(db)) = db else {
            panic!("cannot open the DB-IP database");
        };
        let geo = db.lookup(IpAddr::from([8, 8, 8, 8]));
        assert_eq!(
            geo.as_ref().and_then(|g| g.country.as_deref()),
            Some("US"),
            "{geo:?}"
        );
        assert!(db.lookup(IpAddr::from([10, 0, 0, 1])).is_none());
    }
}
