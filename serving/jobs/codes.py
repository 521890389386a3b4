"""The result codes of the MVP task RPCs and the error every layer of serving.jobs raises.

The seed's rule is "0 OK, > 0 an error"; the values are the runtime's serving codes (serving.errors), plus two
of HTTP's for the states of a task, so one table serves the native, store and MVP services alike:

    code  name            when
    0     OK              done / accepted
    400   BAD_PARAMS      absurd or missing parameters (batch_size 0, max_num_iters 0, negative learning rate,
                          unknown net_model, task_id 0, unknown task_type), malformed store id, the document
                          is not a dataset / not a model, unknown template field
    404   NOT_FOUND       unknown task, unknown template, dataset / model id not in the store
    409   CONFLICT        task id already in use, template name already in use, the task is not in a state that
                          allows the call (pause a finished task, resume a running one, delete a running one)
    425   NOT_READY       test_result_query / evaluation_result_query before the test task has finished
    500   INTERNAL        the server or its database failed (the message names the request id in the log)
    5xx, 57x              the MVI calls (serving.inspection) pass on the code of the app that failed
    503   NO_TRAINER      no app can run the task: the trainer app does not exist or defines no train()/test()

Every non-zero code comes with a message: in the reply's ErrorMsg where the seed's message has one, else (the
seed's Data_res_Code has only resCode) in the trailing metadata `serving-message` (ASCII, non-ASCII escaped),
beside `serving-code`.
"""
from serving.errors import BAD_REQUEST, INTERNAL, NOT_FOUND, UNAVAILABLE, ServingError

OK = 0
BAD_PARAMS = BAD_REQUEST
CONFLICT = 409
NOT_READY = 425
NO_TRAINER = UNAVAILABLE

__all__ = ["BAD_PARAMS", "CONFLICT", "INTERNAL", "JobError", "NOT_FOUND", "NOT_READY",
           "NO_TRAINER", "OK"]


class JobError(ServingError):
    """A task operation refused or failed, with one of the codes above."""

    def __repr__(self):
        return f"JobError({self.code}, {self.message!r})"
