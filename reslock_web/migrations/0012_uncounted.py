from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reslock", "0011_limit_over_limit"),
    ]

    operations = [
        migrations.AddField(
            model_name="lockevent",
            name="received",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="holder",
            name="condition",
            field=models.CharField(
                choices=[
                    ("holding", "holding"),
                    ("stale", "stale"),
                    ("zombie", "zombie"),
                    ("uncounted", "uncounted"),
                    ("leaving", "leaving"),
                ],
                default="holding",
                max_length=12,
            ),
        ),
        migrations.AlterField(
            model_name="limit",
            name="status",
            field=models.CharField(
                choices=[
                    ("over_limit", "over the limit"),
                    ("deadlocked", "deadlocked"),
                    ("uncounted", "uncounted"),
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
