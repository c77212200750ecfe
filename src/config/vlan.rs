//! `vlan_mode`, `tag` and `trunks`: a port's VLANs, with Open vSwitch's meanings.

use super::{VlanConfig, VlanMode};
use std::collections::HashSet;

/// `tag`: a VLAN a port can be put in (0 and 4095 are reserved).
const TAGS: std::ops::RangeInclusive<i64> = 1..=4094;
/// `trunks`: VLAN ids (0: frames without a tag, on a trunk port).
const VIDS: std::ops::RangeInclusive<i64> = 0..=4095;

fn list(trunks: &[i64]) -> String {
    let items: Vec<String> = trunks.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Checks the three keys together.
pub(crate) fn check(
    mode: Option<VlanMode>,
    tag: Option<i64>,
    trunks: Option<&[i64]>,
) -> Result<VlanConfig, String> {
    let mode = mode.unwrap_or(VlanMode::Trunk);
    let tag = check_tag(mode, tag)?;
    let trunks = match trunks {
        None => Vec::new(),
        Some(t) => check_trunks(mode, tag, t)?,
    };
    Ok(VlanConfig { mode, tag, trunks })
}

fn check_tag(mode: VlanMode, tag: Option<i64>) -> Result<u16, String> {
    match (mode, tag) {
        (VlanMode::Trunk, None) => Ok(0),
        (VlanMode::Trunk, Some(t)) => Err(format!(
            "key 'tag' = {t}: does not apply to vlan_mode \"trunk\" (the frames' own tags say their VLAN; \
             for a port in one VLAN, vlan_mode = \"access\")"
        )),
        (_, None) => Err(format!(
            "key 'tag' is missing: vlan_mode \"{mode}\" needs the port's VLAN, 1..=4094"
        )),
        (_, Some(t)) if !TAGS.contains(&t) => Err(format!("key 'tag' = {t}: must be 1..=4094")),
        (_, Some(t)) => Ok(t as u16),
    }
}

/// Ids in range, none twice; for the native modes no 0 (untagged frames are in the
/// native VLAN), and the native VLAN added when the list leaves it out (as OVS
/// does). Sorted, so that two configurations compare equal when they mean the same.
fn check_trunks(mode: VlanMode, tag: u16, trunks: &[i64]) -> Result<Vec<u16>, String> {
    let at = format!("key 'trunks' = {}", list(trunks));
    if mode == VlanMode::Access {
        return Err(format!(
            "{at}: does not apply to vlan_mode \"access\" (the port carries only VLAN tag = {tag})"
        ));
    }
    let mut seen = HashSet::new();
    for &v in trunks {
        if !VIDS.contains(&v) {
            return Err(format!("{at}: VLAN {v} is not 0..=4095"));
        }
        if !seen.insert(v) {
            return Err(format!("{at}: lists VLAN {v} twice"));
        }
        if v == 0 && mode != VlanMode::Trunk {
            return Err(format!(
                "{at}: VLAN 0 cannot be trunked in vlan_mode \"{mode}\" (frames without a tag are in VLAN tag = {tag})"
            ));
        }
    }
    let mut out: Vec<u16> = trunks.iter().map(|&v| v as u16).collect();
    if mode != VlanMode::Trunk && !out.is_empty() && !out.contains(&tag) {
        out.push(tag);
    }
    out.sort_unstable();
    Ok(out)
}
