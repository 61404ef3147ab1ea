//! The version passes of model validation: each event's schema version chain (version at least
//! 1, every older version declared once in `previous`) and its former names (not a live event,
//! 1 to `MAX_FORMER_VERSIONS` stored versions, claimed by one event only).

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use super::{ElementKind, ProblemKind, Report, context_path, has_event};
use crate::model::{BoundedContext, Model};

/// Version pass: each event's version is at least 1, its `previous` entries are older versions
/// listed once each (their fields checked like an event's), and every older version is listed.
pub(super) fn check_event_versions(_: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for e in &context.events {
        let ep = format!("{cp}.events[{}]", e.name);
        let current = e.version;
        if current == 0 {
            r.add(
                format!("{ep}.version"),
                ProblemKind::InvalidEventVersion {
                    event: e.name.clone(),
                },
            );
        }
        let mut listed = BTreeSet::new();
        for (i, prev) in e.previous.iter().enumerate() {
            let pp = format!("{ep}.previous[{i}]");
            r.fields(&pp, &prev.fields);
            if current == 0 {
                // The event's version is already reported; no range to check against.
                continue;
            }
            if prev.version == 0 || prev.version >= current {
                r.add(
                    pp,
                    ProblemKind::PreviousVersionOutOfRange {
                        event: e.name.clone(),
                        version: prev.version,
                        current,
                    },
                );
            } else if !listed.insert(prev.version) {
                r.add(
                    pp,
                    ProblemKind::DuplicatePreviousVersion {
                        event: e.name.clone(),
                        version: prev.version,
                    },
                );
            }
        }
        let missing = missing_versions(current, &listed);
        if !missing.is_empty() {
            r.add(
                format!("{ep}.previous"),
                ProblemKind::MissingPreviousVersions {
                    event: e.name.clone(),
                    current,
                    missing,
                },
            );
        }
    }
}

/// The versions in `1..current` that are not in `listed` (all of which are in that range), as
/// ascending runs; computed from the gaps between listed versions, so a huge `current` costs
/// nothing.
fn missing_versions(current: u32, listed: &BTreeSet<u32>) -> Vec<RangeInclusive<u32>> {
    let mut missing = Vec::new();
    let mut next = 1;
    for &v in listed.iter().chain(std::iter::once(&current)) {
        if v > next {
            missing.push(next..=v - 1);
        }
        next = v.saturating_add(1);
    }
    missing
}

/// Version pass: each event's former names are not empty, not the name of a live event, claim
/// at least one stored version, and are claimed by one event only (across the model).
pub(super) fn check_former_names(model: &Model, context: &BoundedContext, r: &mut Report) {
    let cp = context_path(context);
    for e in &context.events {
        for f in &e.formerly {
            let fp = format!("{cp}.events[{}].formerly[{}]", e.name, f.name);
            if f.name.trim().is_empty() {
                r.add(
                    fp,
                    ProblemKind::EmptyName {
                        kind: ElementKind::Event,
                    },
                );
                continue;
            }
            if has_event(model, &f.name) {
                r.add(
                    &fp,
                    ProblemKind::FormerNameIsLive {
                        event: e.name.clone(),
                        former: f.name.clone(),
                    },
                );
            }
            if f.versions == 0 || f.versions > crate::MAX_FORMER_VERSIONS {
                r.add(
                    &fp,
                    ProblemKind::InvalidFormerVersions {
                        event: e.name.clone(),
                        former: f.name.clone(),
                        versions: f.versions,
                    },
                );
            }
            match r.former.get(&f.name) {
                Some(first) => {
                    let first = first.clone();
                    r.add(
                        fp,
                        ProblemKind::FormerNameClaimedTwice {
                            former: f.name.clone(),
                            event: e.name.clone(),
                            first,
                        },
                    );
                }
                None => {
                    r.former.insert(f.name.clone(), e.name.clone());
                }
            }
        }
    }
}
