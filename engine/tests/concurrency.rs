//! Many writers and readers on one volume at once: disjoint writes all
//! land, concurrent partial writes to one block lose nothing, and reads
//! during writes and snapshots never fail.

use ballast_engine::{Pool, PoolConfig, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_readers_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    pool.create_volume("v", 256 * BS).await.unwrap();
    let v = pool.open_volume("v").unwrap();

    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20u64 {
                // Each task owns blocks t, t+8, t+16, ...
                let vb = t + 8 * round;
                let data = vec![(t * 20 + round) as u8; BS as usize];
                v.write(vb * BS, &data).await.unwrap();
                let mut back = vec![0u8; BS as usize];
                v.read(vb * BS, &mut back).await.unwrap();
                assert_eq!(back, data);
            }
        }));
    }
    // Partial writes: 8 writers each own 512 bytes of block 255.
    for t in 0..8u64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..20u8 {
                v.write(255 * BS + t * 512, &[round.wrapping_add(t as u8 * 32); 512])
                    .await
                    .unwrap();
            }
        }));
    }
    let snapper = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                pool.create_snapshot("v", Some(&format!("s{i}")))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let reader = {
        let v = v.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * BS as usize];
            for _ in 0..20 {
                v.read(0, &mut buf).await.unwrap();
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    snapper.await.unwrap();
    reader.await.unwrap();

    let mut block = vec![0u8; BS as usize];
    v.read(255 * BS, &mut block).await.unwrap();
    for t in 0..8usize {
        let want = 19u8.wrapping_add(t as u8 * 32);
        assert!(
            block[t * 512..(t + 1) * 512].iter().all(|&b| b == want),
            "slice {t} lost"
        );
    }
    // Every full-block write landed where its task put it.
    for t in 0..8u64 {
        for round in 0..20u64 {
            let vb = t + 8 * round;
            let mut b = vec![0u8; BS as usize];
            v.read(vb * BS, &mut b).await.unwrap();
            assert!(b.iter().all(|&x| x == (t * 20 + round) as u8), "block {vb}");
        }
    }
}
