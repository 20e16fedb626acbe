use super::*;

fn pool(subnet: &str, subnet6: Option<&str>) -> AddressPool {
    AddressPool::new(subnet.parse().unwrap(), subnet6.map(|s| s.parse().unwrap()))
}

#[test]
fn first_slots_addresses() {
    let mut pool = pool("10.233.0.0/16", Some("fd00:5ba:d::/48"));
    let first = pool.allocate().unwrap();
    assert_eq!(
        first,
        Slot {
            index: 0,
            host_v4: "10.233.0.1".parse().unwrap(),
            sandbox_v4: "10.233.0.2".parse().unwrap(),
            prefix_v4: 30,
            host_v6: Some("fd00:5ba:d::1".parse().unwrap()),
            sandbox_v6: Some("fd00:5ba:d::2".parse().unwrap()),
            prefix_v6: 64,
        }
    );
    assert_eq!(first.host_ifname(), "sbx0");
    let second = pool.allocate().unwrap();
    assert_eq!(second.index, 1);
    assert_eq!(second.host_v4, "10.233.0.5".parse::<Ipv4Addr>().unwrap());
    assert_eq!(second.sandbox_v4, "10.233.0.6".parse::<Ipv4Addr>().unwrap());
    assert_eq!(second.host_v6, Some("fd00:5ba:d:1::1".parse().unwrap()));
    assert_eq!(second.sandbox_v6, Some("fd00:5ba:d:1::2".parse().unwrap()));
    assert_eq!(second.host_ifname(), "sbx1");
}

#[test]
fn without_subnet6_slots_have_no_v6() {
    let slot = pool("10.233.0.0/16", None).allocate().unwrap();
    assert_eq!((slot.host_v6, slot.sandbox_v6), (None, None));
}

#[test]
fn capacity() {
    assert_eq!(pool("10.233.0.0/28", None).capacity(), 4);
    assert_eq!(pool("10.233.0.0/16", None).capacity(), 16384);
    assert_eq!(pool("10.233.0.0/16", Some("fd00::/56")).capacity(), 256);
    assert_eq!(pool("10.233.0.0/16", Some("fd00::/48")).capacity(), 16384);
    assert_eq!(pool("0.0.0.0/0", Some("::/0")).capacity(), 1 << 30);
    assert_eq!(pool("10.0.0.0/31", None).capacity(), 0);
    assert_eq!(pool("10.0.0.0/8", Some("fd00::/64")).capacity(), 1);
}

#[test]
fn exhaustion_then_release_reuses_the_lowest() {
    let mut pool = pool("10.233.0.0/28", None);
    let slots: Vec<Slot> = std::iter::from_fn(|| pool.allocate()).collect();
    assert_eq!(
        slots.iter().map(|s| s.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(
        slots[3].sandbox_v4,
        "10.233.0.14".parse::<Ipv4Addr>().unwrap()
    );
    assert!(pool.allocate().is_none());
    let mut slots = slots.into_iter();
    let (s0, s1, s2) = (
        slots.next().unwrap(),
        slots.next().unwrap(),
        slots.next().unwrap(),
    );
    pool.release(s2.index);
    pool.release(s0.index);
    pool.release(s1.index);
    assert_eq!(pool.allocate().unwrap().index, 0);
    assert_eq!(pool.allocate().unwrap().index, 1);
    assert_eq!(pool.allocate().unwrap().index, 2);
    assert!(pool.allocate().is_none());
}

#[test]
fn many_slots_stay_cheap() {
    let mut pool = pool("10.0.0.0/8", Some("fd00::/40"));
    let mut slots: Vec<Slot> = (0..10_000).map(|_| pool.allocate().unwrap()).collect();
    let last = slots.pop().unwrap();
    assert_eq!(last.index, 9_999);
    assert_eq!(last.host_ifname(), "sbx9999");
    assert_eq!(last.host_v4, "10.0.156.61".parse::<Ipv4Addr>().unwrap());
    assert_eq!(last.host_v6, Some("fd00:0:0:270f::1".parse().unwrap()));
    // Releases the even indices, highest first.
    for slot in slots.drain(..).rev().step_by(2) {
        pool.release(slot.index);
    }
    assert_eq!(pool.allocate().unwrap().index, 0);
    assert_eq!(pool.allocate().unwrap().index, 2);
}

#[test]
fn ifname_fits_ifnamsiz_for_any_index() {
    let slot = Slot {
        index: u32::MAX,
        ..pool("10.0.0.0/30", None).allocate().unwrap()
    };
    assert!(slot.host_ifname().len() < 16);
}
