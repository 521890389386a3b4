"""MVP training and test tasks (seed 000's task RPCs, seed 004's life cycle, seed 001's train hook).

Training code lives in an app folder like inference code: `eval.py` may define, beside create_net and
net_inference,

    def train(job): ...            runs a TRAIN task
    def test(job): ...             runs a TEST task; returns COCO detections
    TRAIN_NET_MODELS = (...)       optional: the ParamClass.net_model names train() accepts ("" = its default);
                                   any other name is refused with 400 before the task is recorded
    def check_train_params(params) optional: called in the server when a TRAIN task (or template) is submitted,
                                   with the checked ParamClass dict; a ValueError refuses it with 400 and its
                                   text, before anything is recorded. Keep it light: it runs in the server.
    def export(model_bytes, meta, out_dir)
                                   optional: writes a servable app folder for one of this app's snapshots
                                   (serving.jobs.export: `serving export`, TaskControl.model_export)

Which app runs a task:
    TRAIN: the app named by ParamClass.model_name when it is a loaded app defining train(job); otherwise
           (the seed's model_name "mvp_model" is a label, not an app) the server's trainer app,
           `serve --trainer-app NAME` (default "mvp_detector", env SERVING_TRAINER_APP). None: code 503.
    TEST:  the app that made the model under test (the "app" in its store record's meta); it needs test(job).

The hook runs in a worker process of its own (serving.jobs.worker) at a lower CPU priority (nice +10), never
in the server, so serving keeps its latency while a task trains. `job` gives:

    job.params          dict: the ParamClass fields (model_name, dataset_expansion_lst, net_model, model_scope,
                        device_type, inital_learning_rate, device_num (>= 1), max_num_iters, batch_size,
                        snap_shot_ivterval (0: snapshot at the end only)) checked and normalised, plus task_id,
                        interface_id, task_type ("TRAIN"/"TEST"), json_mongodb_id, json_val_id, trained_model_id
    job.store           a serving.store.Store opened on the server's data folder, in this process
    job.train_dataset() (COCO dict, [BGR uint8 numpy image per COCO image]) of json_mongodb_id (the test set of
                        a TEST task); job.val_dataset(): the same for json_val_id, or None;
                        job.load_dataset(id) for any stored dataset
    job.resume_state    bytes of the task's last snapshot when the task is resumed (after pause or an
                        interruption), else None; job.resume_iter: that snapshot's iteration (0 when none)
    job.initial_model   bytes of trained_model_id: the model to start from (TRAIN) or to test (TEST), or None;
                        job.initial_model_meta: its store meta (app, iter, net_model, metrics, ...)
    job.progress(cur_iter, loss, lr, max_iter=None, mAP=None)
                        one TrainRecord (get_train_progresses / stream_train_progress) and a PROGRESS line
    job.checkpoint(cur_iter, state_bytes, metrics=None) -> store id
                        a snapshot: a store document of kind "model", meta {task_id, interface_id, iter,
                        model_name "<net_model or app>_<iter>.ckpt", app, net_model, metrics}; it is appended to
                        the task's model_id_lst (model number = its 1-based position)
    job.should_stop()   true once the task must end now (stop, pause, server shutdown, SIGTERM, server gone):
                        the hook must checkpoint and return promptly (seconds); poll it every iteration
    job.test_progress(done, total)   images tested so far (test_progress_query)
    job.evaluate(coco, detections)   pycocotools evaluation (serving.jobs.evaluation), e.g. validation mAP
    job.work_dir        a scratch folder of the task (DATA/jobs/<task_id>_<interface_id>/work)

train(job) returns nothing; it should checkpoint at its snapshot interval and at the end. test(job) returns a
list of COCO detections {"image_id" (the dataset's COCO id), "category_id", "bbox": [x, y, w, h], "score"};
the worker then stores the result JSON (kind "result": per image its detections and rendered image id), one
rendered image per test image with its boxes drawn (kind "image"), and the evaluation JSON (kind
"evaluation": COCO mAP@[.5:.95], mAP@.5, per-class AP, precision, recall). An exception in a hook fails the
task (FAILED, with the exception and its innermost frames as the error); the server keeps serving.

States (tasks.state) and transitions:

    QUEUED --(a worker slot is free, FIFO, at most `serve --max-jobs` running)--> RUNNING
    RUNNING --> DONE (hook returned) | FAILED (hook raised, or the worker died) |
                STOPPED (task_stop_request) | PAUSED (task_pause_request) | INTERRUPTED (server shut down)
    QUEUED --stop--> STOPPED; QUEUED --pause--> PAUSED; PAUSED/INTERRUPTED --stop--> STOPPED
    RUNNING and asked to stop --pause--> 409 (the stop stands; a stop after a pause replaces it)
    PAUSED / INTERRUPTED --task_resume_request--> QUEUED (the new attempt gets resume_state = last snapshot)
    DONE, FAILED, STOPPED: final (a STOPPED or DONE training task can become a template)

Restart: every record is in DATA/jobs.sqlite3 (WAL) and the store. On a graceful stop (SIGTERM) running
workers are asked to checkpoint and end INTERRUPTED within the grace (then killed). When the server died
(SIGKILL, crash), its workers notice within one poll, checkpoint and end INTERRUPTED, and the next server,
on start, marks any task still RUNNING as INTERRUPTED. INTERRUPTED tasks are NOT restarted on their own
(a restart loop of a crashing trainer would hide the crash): `task_resume_request` / `serving task resume`
continues them from their last snapshot. QUEUED tasks stay queued and start when a slot is free.

Codes: serving.jobs.codes. Progress log: DATA/jobs/<task_id>_<interface_id>/progress.jsonl, one JSON object per
line with "type" START / PROGRESS / END (END has "state", and "error" when the task failed or was killed);
worker.log beside it holds the worker's own output.
"""
