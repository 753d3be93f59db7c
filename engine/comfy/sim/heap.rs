//! Python `heapq` semantics on a `Vec`, so `GET /queue` shows the same `queue_pending`
//! array order as ComfyUI (whose queue is a raw binary heap, not a sorted list).

/// `heapq.heappush`: append, then sift the new item towards the root.
pub fn push<T>(heap: &mut Vec<T>, item: T, less: impl Fn(&T, &T) -> bool) {
    heap.push(item);
    let last = heap.len() - 1;
    sift_down(heap, 0, last, &less);
}

/// `heapq.heappop`: pop the last item; if the heap is not empty, put it at the root and
/// sift it up, returning the old root.
pub fn pop<T>(heap: &mut Vec<T>, less: impl Fn(&T, &T) -> bool) -> Option<T> {
    let last = heap.pop()?;
    if heap.is_empty() {
        return Some(last);
    }
    let root = std::mem::replace(&mut heap[0], last);
    sift_up(heap, 0, &less);
    Some(root)
}

/// `heapq.heapify`: sift up every inner node, from the last one to the root.
pub fn heapify<T>(heap: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let n = heap.len();
    for i in (0..n / 2).rev() {
        sift_up(heap, i, &less);
    }
}

/// `heapq._siftdown`: move the item at `pos` up towards `start` while it is smaller than
/// its parent.
fn sift_down<T>(heap: &mut [T], start: usize, mut pos: usize, less: &impl Fn(&T, &T) -> bool) {
    while pos > start {
        let parent = (pos - 1) >> 1;
        if less(&heap[pos], &heap[parent]) {
            heap.swap(pos, parent);
            pos = parent;
            continue;
        }
        break;
    }
}

/// `heapq._siftup`: move the smaller child up until a leaf is reached, put the item there,
/// then `_siftdown` it (the "bottom-up" variant Python uses).
fn sift_up<T>(heap: &mut [T], mut pos: usize, less: &impl Fn(&T, &T) -> bool) {
    let end = heap.len();
    let start = pos;
    let mut child = 2 * pos + 1;
    while child < end {
        let right = child + 1;
        if right < end && !less(&heap[child], &heap[right]) {
            child = right;
        }
        // Equivalent to Python's `heap[pos] = heap[childpos]` with the new item carried
        // down: swapping keeps the carried item at `child`.
        heap.swap(pos, child);
        pos = child;
        child = 2 * pos + 1;
    }
    sift_down(heap, start, pos, less);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_heapq_order_of_capture_05() {
        let lt = |a: &f64, b: &f64| a < b;
        let mut h: Vec<f64> = Vec::new();
        push(&mut h, 34.0, lt);
        push(&mut h, 35.0, lt);
        // delete 34 (index 0): pop(0) + heapify
        h.remove(0);
        heapify(&mut h, lt);
        push(&mut h, -36.0, lt);
        push(&mut h, -37.0, lt);
        assert_eq!(h, vec![-37.0, 35.0, -36.0]);
        assert_eq!(pop(&mut h, lt), Some(-37.0));
        assert_eq!(pop(&mut h, lt), Some(-36.0));
        assert_eq!(pop(&mut h, lt), Some(35.0));
        assert_eq!(pop(&mut h, lt), None);
    }

    #[test]
    fn pop_matches_python_for_a_known_sequence() {
        // Python: h=[]; [heappush(h,x) for x in [5,3,8,1,9,2]]; h == [1, 3, 2, 5, 9, 8]
        let lt = |a: &i32, b: &i32| a < b;
        let mut h = Vec::new();
        for x in [5, 3, 8, 1, 9, 2] {
            push(&mut h, x, lt);
        }
        assert_eq!(h, vec![1, 3, 2, 5, 9, 8]);
        // heappop -> 1, h == [2, 3, 8, 5, 9]
        assert_eq!(pop(&mut h, lt), Some(1));
        assert_eq!(h, vec![2, 3, 8, 5, 9]);
    }
}
