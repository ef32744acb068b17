//! XME split arguments through a pool: one call per element, results in
//! call order.

use shmpool::{split, Pool, SplitError};

fn weigh(call: (u64, String, u64)) -> String {
    format!("{}{}{}", call.0 * call.2, call.1, call.2)
}

#[test]
fn split_calls_run_in_a_pool_in_call_order() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let a: Vec<u64> = (0..100).collect();
    let b = vec!["x".to_string(), "y".to_string()];
    let out: Vec<String> = pool.map(weigh, split((a, b), 3u64).unwrap()).unwrap().map(Result::unwrap).collect();
    assert_eq!(out.len(), 100);
    assert_eq!(out[0], "0x3");
    assert_eq!(out[1], "3y3");
    assert_eq!(out[99], "297y3");
    assert!(matches!(split((Vec::<u64>::new(), vec![1u8]), ()), Err(SplitError::Empty { index: 0 })));
}
