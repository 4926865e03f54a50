from mmengine.logging import MMLogger


def get_logger(name='dery'):
    """The current MMLogger (the Runner's when one exists), else a 'dery' one."""
    if MMLogger.check_instance_created(name):
        return MMLogger.get_instance(name)
    try:
        return MMLogger.get_current_instance()
    except Exception:  # pragma: no cover - mmengine always has one
        return MMLogger.get_instance(name, logger_name=name)


def debug_logging():
    """Whether DeRy's logs are at debug level: ``DERY_DEBUG=1``, or the 'dery' logger set to DEBUG."""
    import logging
    import os
    if os.environ.get('DERY_DEBUG', '') not in ('', '0'):
        return True
    return MMLogger.check_instance_created('dery') and MMLogger.get_instance('dery').level <= logging.DEBUG


class quiet_mmengine:
    """Hold mmengine's INFO lines back while a model is built and loaded (a context manager).

    mmengine reports every parameter's initialisation and every checkpoint
    read at INFO level: some 330 lines for a tiny assembled network in a
    notebook. Inside this context the current MMLogger (and mmengine's own)
    shows warnings and errors only; at debug level (:func:`debug_logging`)
    everything shows as usual.
    """

    def __enter__(self):
        import logging
        self._saved = []
        if debug_logging():
            return self
        loggers = [MMLogger.get_current_instance()]
        if MMLogger.check_instance_created('mmengine'):
            loggers.append(MMLogger.get_instance('mmengine'))
        for lg in {id(lg): lg for lg in loggers}.values():
            self._saved.append((lg, lg.level))
            lg.setLevel(max(lg.level, logging.WARNING))
        return self

    def __exit__(self, *exc):
        for lg, level in self._saved:
            lg.setLevel(level)
        return False
