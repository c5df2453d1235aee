from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reslock", "0010_holder_slots"),
    ]

    operations = [
        migrations.AddField(
            model_name="limit",
            name="is_over_limit",
            field=models.BooleanField(default=False),
        ),
        migrations.AlterField(
            model_name="limit",
            name="status",
            field=models.CharField(
                choices=[
                    ("over_limit", "over the limit"),
                    ("deadlocked", "deadlocked"),
                    ("zombie", "zombie"),
                    ("stale", "stale"),
                    ("drift", "drift"),
                    ("contended", "contended"),
                    ("held", "held"),
                    ("waiting", "waiting"),
                    ("inactive", "inactive"),
                    ("free", "free"),
                    ("gone", "gone"),
                ],
                default="free",
                max_length=12,
            ),
        ),
    ]
