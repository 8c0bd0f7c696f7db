"""Shared by the migrations that give the staff groups their permissions (the leading
underscore keeps Django's migration loader away from this module)."""


def grant_group_permissions(apps, wanted: dict[str, list[tuple[str, str]]]) -> None:
    """Give each group (created if missing) its (app_label, codename) permissions.

    Permissions are normally created after migrate; the groups need them now, so they are
    created first. A codename that does not exist is an error, not a silent gap."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        previous = getattr(app_config, "models_module", None)  # historical stubs have none
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = previous
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, permissions in wanted.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in permissions:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename))
