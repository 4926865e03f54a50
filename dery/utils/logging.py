from mmengine.logging import MMLogger


def get_logger(name='dery'):
    """The current MMLogger (the Runner's when one exists), else a 'dery' one."""
    if MMLogger.check_instance_created(name):
        return MMLogger.get_instance(name)
    try:
        return MMLogger.get_current_instance()
    except Exception:  # pragma: no cover - mmengine always has one
        return MMLogger.get_instance(name, logger_name=name)
