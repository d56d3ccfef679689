"""The line a lost node gets, from its bookkeeping alone (no Ray): which runs it took along, where
each resumed, and nothing said twice. The real thing, a node killed mid-sweep, is in
tests/test_multinode.py."""

from __future__ import annotations

from pipeline.cluster.nodes import NodeWatch

HEAD, WORKER = "a" * 56, "b" * 56


def _two_runs_training() -> NodeWatch:
    watch = NodeWatch()
    watch.nodes({HEAD: "10.0.0.1", WORKER: "10.0.0.2"})
    for run in ("ap", "csada"):
        watch.started(run)
        assert watch.epoch(run, 0, 0) == []
    assert watch.epoch("csada", 1, 0) == []
    return watch


def test_a_lost_node_is_said_once_its_runs_resumed_and_the_others_went_on():
    watch = _two_runs_training()
    watch.nodes({HEAD: "10.0.0.1"})
    assert watch.retried("csada")  # its Tune retry is the node's to tell, not a line of its own
    assert watch.epoch("ap", 1, 0) == []  # ap was on the head: it went on; csada has not reported yet
    assert watch.epoch("csada", 2, 1) == [
        ("node bbbbbbbb (10.0.0.2) left the cluster: 1 run resumed on the other nodes from its checkpoint "
         "(csada after epoch 2)")]
    watch.nodes({HEAD: "10.0.0.1"})
    assert watch.epoch("csada", 3, 1) == [] and watch.flush() == []  # said once


def test_a_run_that_lost_an_epoch_says_how_many_it_trained_again():
    watch = _two_runs_training()  # csada reported epoch 1; its checkpoint was older (a longer interval)
    watch.nodes({HEAD: "10.0.0.1"})
    watch.ended("ap")
    assert watch.epoch("csada", 1, 1) == [
        ("node bbbbbbbb (10.0.0.2) left the cluster: 1 run resumed on the other nodes from its checkpoint "
         "(csada after epoch 1, 1 epoch trained again)")]


def test_runs_restarted_by_ray_train_count_as_resumed_and_a_node_without_runs_says_so():
    watch = _two_runs_training()
    watch.nodes({HEAD: "10.0.0.1"})  # no Tune retry: Ray Train restarted both runs' workers
    watch.epoch("ap", 1, 1)
    [line] = watch.epoch("csada", 2, 1)
    assert line.endswith("2 runs resumed on the other nodes from their checkpoints (ap after epoch 1, csada after "
                         "epoch 2)")
    watch.nodes({HEAD: "10.0.0.1", "c" * 56: "10.0.0.3"})
    watch.nodes({HEAD: "10.0.0.1"})
    assert watch.ended("ap") == []  # finished without a restart: it was not on the node that left
    assert watch.ended("csada") == ["node cccccccc (10.0.0.3) left the cluster; no run was training on it"]
    assert watch.flush() == []


def test_a_node_said_dead_by_the_probe_is_not_lost_again_when_the_head_still_lists_it():
    watch = _two_runs_training()
    watch.nodes({HEAD: "10.0.0.1"})  # its raylet refused the probe
    watch.nodes({HEAD: "10.0.0.1", WORKER: "10.0.0.2"})  # the head has not declared it dead yet
    watch.nodes({HEAD: "10.0.0.1"})
    watch.epoch("ap", 1, 0)
    assert len(watch.epoch("csada", 2, 1)) == 1 and watch.flush() == []


def test_a_retry_no_lost_node_explains_keeps_its_own_line_and_a_run_that_never_resumed_is_named_at_the_end():
    watch = _two_runs_training()
    assert not watch.retried("ap")  # a crashed worker: the stage prints the retry itself
    watch.nodes({HEAD: "10.0.0.1"})
    watch.epoch("ap", 1, 0)
    assert watch.flush() == [("node bbbbbbbb (10.0.0.2) left the cluster; 1 run had not reported again when the "
                              "stage ended")]


def test_a_run_that_resumed_after_its_last_epoch_or_was_idle_on_the_lost_node():
    watch = _two_runs_training()
    watch.nodes({HEAD: "10.0.0.1"})
    watch.retried("csada")
    watch.epoch("ap", 1, 0)
    assert watch.ended("csada") == [("node bbbbbbbb (10.0.0.2) left the cluster: 1 run resumed on the other nodes "
                                     "from its checkpoint (csada finished)")]
    idle = NodeWatch()
    idle.nodes({HEAD: "10.0.0.1", WORKER: "10.0.0.2"})
    idle.nodes({HEAD: "10.0.0.1"})
    assert idle.flush() == ["node bbbbbbbb (10.0.0.2) left the cluster; no run was training on it"]
